"""The data sources by name: what ``rnncodec data prepare --source`` and a sweep file's ``data.source``
accept (importable without numpy or pyarrow, for validation before any work)."""

from rnncodec.data.errors import DataError, shown

CIFAR = ("cifar10", "cifar100", "cifar")  # "cifar": CIFAR-10 and CIFAR-100 together
PHOTOS = ("sample",)  # the photographs shipped inside scikit-image
FOLDER = "folder:"  # folder:PATH, a folder of photographs
SOURCES = "sample, cifar10, cifar100, cifar, folder:PATH"


def check_source(source: str) -> str:
    """``source`` if it names a source, else DataError listing them."""
    if source in CIFAR or source in PHOTOS or (source.startswith(FOLDER) and len(source) > len(FOLDER)):
        return source
    raise DataError(f"unknown source {shown(source)}; choose one of {SOURCES}")
