"""CIFAR archives: the shared CIFAR-10 copy, CIFAR-100-format fixtures, md5 checks and bad archives."""

import hashlib
import io
import os
import pickle
import struct
import tarfile
import tracemalloc
import zlib
from gzip import compress as gzip_compress
from pathlib import Path

import numpy as np
import pytest

from rnncodec import data
from rnncodec.data.cifar import CIFAR10, CIFAR100, FLAG, Layout

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_CIFAR10 = SHARED / "cifar10" / "cifar-10-python.tar.gz"
needs_shared = pytest.mark.skipif(
    not SHARED_CIFAR10.is_file(), reason=f"shared CIFAR-10 archive absent ({SHARED_CIFAR10})"
)


def batches(layout: Layout, counts: tuple[int, int], seed: int = 0, tamper: object = None) -> dict[str, bytes]:
    """The files of a CIFAR-format archive (python pickles, protocol 2) with ``counts`` train/test images."""
    rng = np.random.default_rng(seed)
    files = {}
    per_file = [counts[0] // len(layout.train)] * len(layout.train) + [counts[1]]
    for name, n in zip((*layout.train, *layout.test), per_file):
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"{i}.png" for i in range(n)],
        }
        for key, classes in zip(layout.label_keys, layout.classes):
            batch[key] = rng.integers(0, classes, n).tolist()
        files[name] = pickle.dumps(tamper if tamper is not None and name == layout.train[0] else batch, protocol=2)
    files[layout.meta] = pickle.dumps(
        {k: [f"{k}{i}" for i in range(c)] for k, c in zip(layout.class_keys, layout.classes)}, protocol=2
    )
    return files


def tar_bytes(layout: Layout, files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` inside the layout's folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{layout.folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def write_archive(folder: Path, layout: Layout, counts: tuple[int, int], seed: int = 0, tamper: object = None) -> Path:
    """A CIFAR-format ``.tar.gz`` with ``counts`` train/test images."""
    path = folder / layout.archive
    path.write_bytes(gzip_compress(tar_bytes(layout, batches(layout, counts, seed, tamper))))
    return path


BOMB = 5 << 30


def write_bomb(folder: Path, layout: Layout, header: tarfile.TarInfo) -> Path:
    """A CIFAR-format ``.tar.gz`` of 5 MB whose first entry, ``header``, is followed by 5 GiB of zeros and
    then the usual files. The zeros are one 16 MiB deflate run repeated (a full flush makes it stand
    alone); the gzip CRC is left 0, as a refusal from the header never reads that far."""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    run = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = run.compress(bytes(1 << 24)) + run.flush(zlib.Z_FULL_FLUSH)
    rest = tar_bytes(layout, batches(layout, (50, 10)))
    path = folder / layout.archive
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        out.write(raw.compress(header.tobuf(tarfile.GNU_FORMAT)) + raw.flush(zlib.Z_FULL_FLUSH))
        out.writelines(zeros for _ in range(BOMB >> 24))
        out.write(raw.compress(rest) + raw.flush())
        out.write(struct.pack("<II", 0, (512 + BOMB + len(rest)) & 0xFFFFFFFF))
    return path


@pytest.fixture(scope="module")
def shared_cifar10(tmp_path_factory):
    if not SHARED_CIFAR10.is_file():
        pytest.skip(f"shared CIFAR-10 archive absent ({SHARED_CIFAR10})")
    cache = tmp_path_factory.mktemp("cache")
    folder = data.prepare("cifar10", root=SHARED_CIFAR10.parent, accept_unverified=True, cache_dir=cache)
    with data.open_split(folder, "train", verify_sha256=False) as train:
        yield folder, train


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    with tarfile.open(SHARED_CIFAR10) as tar:
        tar.extractall(root, filter="data")
    return root


@needs_shared
def test_shared_training_set_has_5000_images_per_class(shared_cifar10, extracted):
    folder, train = shared_cifar10
    assert len(train) == 50_000
    assert np.bincount(train.column("label")).tolist() == [5000] * 10
    assert (train.column("index") == np.arange(50_000)).all() and set(train.column("source")) == {"cifar10"}
    test = pickle.loads((extracted / CIFAR10.folder / "test_batch").read_bytes(), encoding="latin1")
    with data.open_split(folder, "val") as val:  # 1,000 in the shared copy, 10,000 in the official one
        assert len(val) == len(test["data"])
        assert np.array_equal(val.images(np.arange(len(val))).reshape(len(val), -1), test["data"])
        assert np.array_equal(val.column("label"), test["labels"])


@needs_shared
def test_shared_training_mean_per_channel(shared_cifar10):
    _, train = shared_cifar10
    total = np.zeros(3)
    for start in range(0, len(train), 10_000):
        total += train.images(np.arange(start, start + 10_000)).sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / (len(train) * 32 * 32 * 255)
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)


@needs_shared
def test_first_image_equals_torchvision(shared_cifar10, extracted):
    torchvision = pytest.importorskip("torchvision")

    class UncheckedCIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:  # the shared copy is not the official file: same pixels, other md5
            return True

    reference = UncheckedCIFAR10(str(extracted), train=True)
    _, train = shared_cifar10
    assert np.array_equal(train.images([0])[0].transpose(1, 2, 0), reference.data[0])
    assert train.column("label")[0] == reference.targets[0]


@needs_shared
def test_extracted_folder_shares_the_archive_cache(shared_cifar10, extracted):
    folder, _ = shared_cifar10
    again = data.prepare("cifar10", root=extracted / CIFAR10.folder, accept_unverified=True, cache_dir=folder.parent)
    assert again == folder


def test_unverified_archive_needs_the_flag(tmp_path):
    archive = write_archive(tmp_path, CIFAR10, (50, 10))
    with pytest.raises(data.DataError, match=FLAG) as error:
        data.prepare("cifar10", root=archive, cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value) and "data_batch_1" in str(error.value)
    assert not (tmp_path / "cache").exists()


@needs_shared
def test_official_md5_table_matches_the_untouched_member():
    with tarfile.open(SHARED_CIFAR10) as tar:
        meta = tar.extractfile(f"{CIFAR10.folder}/{CIFAR10.meta}").read()
    assert hashlib.md5(meta).hexdigest() == CIFAR10.md5[CIFAR10.meta]


@needs_shared
def test_truncated_archive_fails_cleanly(tmp_path):
    truncated = tmp_path / CIFAR10.archive
    with open(SHARED_CIFAR10, "rb") as source:
        truncated.write_bytes(source.read(40_000_000))
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="truncated"):
        data.prepare("cifar10", root=truncated, accept_unverified=True, cache_dir=cache)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]


def test_cifar100_keeps_fine_and_coarse_labels(tmp_path):
    archive = write_archive(tmp_path, CIFAR100, (300, 100))
    folder = data.prepare("cifar100", root=archive, accept_unverified=True, cache_dir=tmp_path / "cache", rotations=2)
    with tarfile.open(archive) as tar:
        train = pickle.load(tar.extractfile(f"{CIFAR100.folder}/train"), encoding="latin1")
    with data.open_split(folder) as reader:
        assert len(reader) == 600
        rows = np.flatnonzero(reader.column("rotation") == 0)
        index = reader.column("index")[rows]
        assert (reader.column("label")[rows] == np.asarray(train["fine_labels"])[index]).all()
        assert (reader.column("coarse_label")[rows] == np.asarray(train["coarse_labels"])[index]).all()
        assert (reader.images(rows).reshape(len(rows), -1) == train["data"][index]).all()
    with data.open_split(folder, "val") as val:
        assert len(val) == 100 and (val.column("rotation") == 0).all()


def test_combined_cifar_keeps_labels_with_their_source(tmp_path):
    write_archive(tmp_path, CIFAR10, (50, 20), seed=1)
    write_archive(tmp_path, CIFAR100, (40, 10), seed=2)
    folder = data.prepare("cifar", root=tmp_path, accept_unverified=True, cache_dir=tmp_path / "cache")
    with data.open_split(folder) as train:
        source, label, coarse = train.column("source"), train.column("label"), train.column("coarse_label")
    assert (source == "cifar10").sum() == 50 and (source == "cifar100").sum() == 40
    assert (coarse[source == "cifar10"] == -1).all() and label[source == "cifar10"].max() < 10
    assert (coarse[source == "cifar100"] >= 0).all()
    assert len(data.open_split(folder, "val")) == 30


def test_pickle_with_foreign_globals_is_refused_even_when_accepted(tmp_path):
    archive = write_archive(tmp_path, CIFAR10, (50, 10), tamper=os.system)
    with pytest.raises(data.DataError, match="not a readable CIFAR batch"):
        data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=tmp_path / "cache")


class _UninitialisedArray:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, "B")`` alone: an array allocated, never filled."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def __reduce__(self):
        return np.zeros(0).__reduce__()[0], (np.ndarray, self.shape, "B")


def test_array_larger_than_its_pickle_is_refused_before_allocation(tmp_path):
    bomb = {"data": _UninitialisedArray((1_000_000, 3072)), "labels": [0]}
    archive = write_archive(tmp_path, CIFAR10, (50, 10), tamper=bomb)
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match=r"declares a \(1000000, 3072\) array, larger than the whole file"):
            data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=tmp_path / "cache")
        assert tracemalloc.get_traced_memory()[1] < 100 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("labels", [["a"] * 10, [10**30] * 10, [1.7] * 10, [[1, 2]] * 10, 5])
def test_labels_that_are_not_small_integers_are_refused(tmp_path, labels):
    batch = {"data": np.zeros((10, 3072), np.uint8), "labels": labels}
    archive = write_archive(tmp_path, CIFAR10, (50, 10), tamper=batch)
    with pytest.raises(data.DataError, match=r"data_batch_1 needs 10 'labels' in 0\.\.9"):
        data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=tmp_path / "cache")


def test_extracted_folder_missing_a_batch(tmp_path):
    archive = write_archive(tmp_path, CIFAR10, (50, 10))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (tmp_path / CIFAR10.folder / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="lacks data_batch_3"):
        data.prepare("cifar10", root=tmp_path / CIFAR10.folder, accept_unverified=True, cache_dir=tmp_path / "cache")
    os.mkfifo(tmp_path / CIFAR10.folder / "data_batch_3")  # opened, it would wait forever
    with pytest.raises(data.DataError, match=r"data_batch_3 is not a regular file \(a device, pipe or socket\)"):
        data.prepare("cifar10", root=tmp_path / CIFAR10.folder, accept_unverified=True, cache_dir=tmp_path / "cache")


def test_offline_download_names_the_way_out(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # refused at once: offline whatever the machine
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(data.DataError, match="--root PATH"):
        data.prepare("cifar10", cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("offset", [-8, -4], ids=["crc", "length"])
def test_damaged_gzip_trailer_is_refused_even_when_accepted(tmp_path, offset):
    archive = write_archive(tmp_path, CIFAR10, (50, 10))
    payload = bytearray(archive.read_bytes())
    payload[offset] ^= 1  # the trailer: CRC32, then the length
    archive.write_bytes(bytes(payload))
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="download it again") as error:
        data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=cache)
    assert str(archive) in str(error.value) and "\n" not in str(error.value)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]


def bomb_header(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    header = tarfile.TarInfo(name)
    header.size, header.type = BOMB, kind
    return header


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (bomb_header(f"{CIFAR10.folder}/data_batch_1"), "data_batch_1' is 5,368,709,120 bytes"),
        (bomb_header(f"{CIFAR10.folder}/readme.html"), "holds more than"),
        (bomb_header("././@PaxHeader", tarfile.XHDTYPE), "5,368,709,120-byte extended header"),
    ],
    ids=["needed", "not-needed", "pax-header"],
)
def test_gzip_bomb_is_refused_from_its_tar_header(tmp_path, header, message):
    archive = write_bomb(tmp_path, CIFAR10, header)
    cache = tmp_path / "cache"
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match=message) as error:
            data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # file_digest's 16 MiB block holding the 5 MB file; the 5 GiB are never unpacked
    assert "\n" not in str(error.value) and "download" in str(error.value)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]


def test_archive_of_countless_files_is_refused(tmp_path):
    files = {f"junk{i}": b"" for i in range(100)} | batches(CIFAR10, (50, 10))
    archive = tmp_path / CIFAR10.archive
    archive.write_bytes(gzip_compress(tar_bytes(CIFAR10, files)))
    with pytest.raises(data.DataError, match="more than 64 files"):
        data.prepare("cifar10", root=archive, accept_unverified=True, cache_dir=tmp_path / "cache")


def test_extracted_batch_above_its_limit_is_refused_unread(tmp_path):
    archive = write_archive(tmp_path, CIFAR10, (50, 10))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    with open(tmp_path / CIFAR10.folder / "test_batch", "r+b") as handle:
        handle.truncate(BOMB)  # sparse: 5 GiB declared, nothing on disk
    with pytest.raises(data.DataError, match="test_batch' is 5,368,709,120 bytes"):
        data.prepare("cifar10", root=tmp_path / CIFAR10.folder, accept_unverified=True, cache_dir=tmp_path / "c")
