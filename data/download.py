"""Fetching the official CIFAR archives through torchvision's downloader (md5-checked) into the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rnncodec.data.cache import lock_beside
from rnncodec.data.cifar import Layout
from rnncodec.data.errors import DataError


def download_archive(layout: Layout, cache_dir: Path) -> Path:
    """``cache_dir/downloads/<archive>``, downloaded once (and checked against the official md5) if absent."""
    folder = Path(cache_dir) / "downloads"
    target = folder / layout.archive
    with lock_beside(target):
        if target.is_file():
            return target
        tmp = folder / f".{layout.archive}.tmp-{os.getpid()}"
        try:
            from torchvision.datasets.utils import download_url  # torchvision only here, only when downloading

            download_url(layout.url, str(tmp), filename=layout.archive, md5=layout.archive_md5)
            os.rename(tmp / layout.archive, target)
        except (OSError, RuntimeError) as exc:
            raise DataError(
                f"cannot download {layout.title} from {layout.url} ({exc}); when offline, pass --root PATH "
                f"to a copy of {layout.archive} or its extracted {layout.folder}/ folder"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
