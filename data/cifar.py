"""CIFAR-10 and CIFAR-100 from their official python archives (``.tar.gz`` or extracted folder).

The batches are Python 2 pickles. They are unpickled only once their md5 matches the officially
published sums, or when the caller passed ``accept_unverified=True`` (``--accept-unverified``), and
even then with an unpickler that resolves nothing but the numpy array constructors.

An archive is read as one gzip stream, to its end, where the gzip CRC is checked. Every needed file is
refused from its tar header when it declares more than 1.25 × its official size, and the archive when
its files declare more than all of those together or number more than ``MAX_MEMBERS``, so a gzip bomb
is refused before it is unpacked; files are hashed in blocks, and held whole only to be unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnncodec.data.errors import DataError, shown
from rnncodec.data.files import file_digest, open_regular
from rnncodec.data.progress import progress_bar
from rnncodec.data.shards import IMAGE_BYTES, Rows

FLAG = "--accept-unverified"
CHUNK = 10_000
BLOCK = 1 << 20
MAX_MEMBERS = 64  # the official archives hold 8 (CIFAR-10) and 5 (CIFAR-100)
MAX_EXTENDED = 1 << 16  # a pax header or GNU long name, which tarfile reads whole into memory
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


@dataclass(frozen=True)
class Layout:
    """Where an official CIFAR archive keeps what, and its published md5 sums (as torchvision lists them)."""

    name: str
    title: str
    url: str
    archive: str
    archive_md5: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    md5: dict[str, str]
    sizes: dict[str, int]  # bytes of each official member, rounded
    label_keys: tuple[str, ...]  # fine label first; CIFAR-100 adds the coarse one
    class_keys: tuple[str, ...]
    classes: tuple[int, ...]

    def limit(self, name: str) -> int:
        """The most bytes member ``name`` may hold: 1.25 × its official size, at least 64 KiB."""
        return max(self.sizes[name] * 5 // 4, 1 << 16)

    @property
    def budget(self) -> int:
        """The most bytes a whole archive may unpack to: every member at its limit, and 1 MiB more."""
        return sum(self.limit(name) for name in self.sizes) + BLOCK


CIFAR10 = Layout(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    sizes={**{f"data_batch_{i}": 31_036_000 for i in range(1, 6)}, "test_batch": 31_036_000, "batches.meta": 158},
    label_keys=("labels",),
    class_keys=("label_names",),
    classes=(10,),
)

CIFAR100 = Layout(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    sizes={"train": 155_250_000, "test": 31_050_000, "meta": 1_760},
    label_keys=("fine_labels", "coarse_labels"),
    class_keys=("fine_label_names", "coarse_label_names"),
    classes=(100, 20),
)

LAYOUTS = {layout.name: layout for layout in (CIFAR10, CIFAR100)}


def locate(layout: Layout, root: Path) -> Path:
    """The archive file or extracted folder of ``layout`` at ``root`` (itself, or inside it)."""
    root = Path(root).expanduser()
    if root.is_file():
        return root
    for candidate in (root, root / layout.folder):
        if (candidate / layout.meta).is_file():
            return candidate
    if (root / layout.archive).is_file():
        return root / layout.archive
    raise DataError(
        f"no {layout.title} found at {root}: give --root the {layout.archive} file, its extracted "
        f"{layout.folder}/ folder, or a folder holding either"
    )


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def _read(handle: BinaryIO, limit: int, keep: bool) -> tuple[str, bytes]:
    """The md5 of what ``handle`` holds (at most ``limit + 1`` bytes), and those bytes when ``keep``;
    without ``keep`` they are hashed block by block and dropped."""
    if keep:
        payload = handle.read(limit + 1)
        return _md5(payload), payload
    digest, left = hashlib.md5(usedforsecurity=False), limit + 1
    while left > 0 and (block := handle.read(min(BLOCK, left))):
        digest.update(block)
        left -= len(block)
    return digest.hexdigest(), b""


class _Budget:
    """A stream that raises ``refusal`` rather than give more than ``limit`` bytes in all."""

    def __init__(self, stream: BinaryIO, limit: int, refusal: DataError) -> None:
        self.stream, self.left, self.refusal = stream, limit, refusal

    def read(self, size: int = -1) -> bytes:
        block = self.stream.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(block)
        if self.left < 0:
            raise self.refusal
        return block


class _TarHeader(tarfile.TarInfo):
    """A tar header that refuses, before tarfile reads them into memory, an extended header (pax, GNU
    long name) above ``MAX_EXTENDED`` and the sparse-file maps no CIFAR archive holds."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        header = super().frombuf(buf, encoding, errors)
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.HeaderError("a sparse file")
        if header.type in _EXTENDED and header.size > MAX_EXTENDED:
            raise tarfile.HeaderError(f"a {header.size:,}-byte extended header")
        return header


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only what a CIFAR batch needs: numpy array reconstruction, of arrays no larger than the
    pickle itself (``_reconstruct`` allocates whatever shape it is given, before any data arrives)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def __init__(self, payload: bytes) -> None:
        super().__init__(io.BytesIO(payload), encoding="latin1")
        self.payload_bytes = len(payload)

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which no CIFAR batch does")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            found = super().find_class(module, name)
        return self._bounded(found) if name == "_reconstruct" else found

    def _bounded(self, reconstruct):
        def bounded(subtype, shape, dtype):
            sizes = shape if isinstance(shape, tuple) else (shape,)
            if not all(isinstance(n, int) and n >= 0 for n in sizes):
                raise pickle.UnpicklingError(f"declares an array of shape {shown(shape)}")
            if np.prod(sizes, dtype=object) * np.dtype(dtype).itemsize > self.payload_bytes:
                raise pickle.UnpicklingError(f"declares a {shown(shape)} array, larger than the whole file")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return reconstruct(subtype, shape, dtype)
        return bounded


@dataclass(frozen=True)
class Split:
    """Images (n, 3, 32, 32) uint8 and their labels (one array per label key)."""

    pixels: np.ndarray
    labels: tuple[np.ndarray, ...]


class CifarArchive:
    """One official CIFAR archive, checked against the published md5 sums when opened."""

    def __init__(self, layout: Layout, location: Path, *, accept_unverified: bool = False) -> None:
        self.layout, self.location = layout, Path(location)
        self.accept_unverified = accept_unverified
        self.fingerprint = self._check()

    @property
    def _needed(self) -> tuple[str, ...]:
        return (*self.layout.train, *self.layout.test, self.layout.meta)

    def _members(self, keep: bool) -> Iterator[tuple[str, str, bytes]]:
        """Yield (file name, md5, bytes when ``keep``) of every needed file, from the archive or the folder;
        no file above its layout's limit is read."""
        if self.location.is_file():
            yield from self._archive_members(keep)
            return
        for name in self._needed:
            path = self.location / name
            if not path.is_file():
                kind = ("a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
                        if path.exists() else None)
                raise DataError(
                    f"{path} is {kind}; extract the archive again" if kind else
                    f"{self.location} lacks {name}: it is not a complete {self.layout.folder}/ folder; "
                    "extract the archive again"
                )
            with open_regular(path, self.layout.title, DataError) as handle:  # it may have changed since the check
                self._check_size(name, name, os.fstat(handle.fileno()).st_size)
                yield name, *_read(handle, self.layout.limit(name), keep)

    def _check_size(self, name: str, label: str, size: int) -> None:
        if size > self.layout.limit(name):
            raise DataError(
                f"{self.location}: {shown(label)} is {size:,} bytes, more than the {self.layout.limit(name):,} an "
                f"official {self.layout.title} {name} could be; it is damaged or hostile, download "
                f"{self.layout.archive} again"
            )

    def _archive_members(self, keep: bool) -> Iterator[tuple[str, str, bytes]]:
        """The needed files of the ``.tar.gz``, each bounded by the size in its tar header before it is read;
        the files not needed are skipped, and the gzip stream is read to its end, where its CRC is checked."""
        needed, declared, budget = set(self._needed), 0, self.layout.budget
        too_large = DataError(f"{self.location} holds more than {budget:,} bytes, which no {self.layout.title} "
                              f"archive does; it is damaged or hostile, download {self.layout.archive} again")
        try:
            with gzip.open(self.location, "rb") as packed:
                stream = _Budget(packed, budget, too_large)
                with tarfile.open(fileobj=stream, mode="r|", tarinfo=_TarHeader) as tar:
                    for count, member in enumerate(tar, 1):
                        if count > MAX_MEMBERS:
                            raise DataError(f"{self.location} holds more than {MAX_MEMBERS} files, which no "
                                            f"{self.layout.title} archive does; download {self.layout.archive} again")
                        parent, _, name = member.name.rpartition("/")
                        wanted = member.isfile() and name in needed and parent.rpartition("/")[2] == self.layout.folder
                        if wanted:
                            self._check_size(name, member.name, member.size)
                        declared += member.size
                        if declared > budget:
                            raise too_large
                        if wanted:
                            needed.discard(name)
                            yield name, *_read(tar.extractfile(member), self.layout.limit(name), keep)
                while stream.read(BLOCK):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(
                f"{self.location} is truncated, damaged or not a gzip tar ({shown(str(exc))}); "
                f"download it again ({self.layout.url})"
            ) from None
        if needed:
            raise DataError(
                f"{self.location} lacks {', '.join(sorted(needed))}: it is not the {self.layout.title} "
                f"python archive ({self.layout.archive})"
            )

    def _check(self) -> dict:
        """A fingerprint for cache keys; raises unless verified or accepted."""
        identity = {"dataset": self.layout.name}
        if self.location.is_file() and file_digest(self.location, "md5") == self.layout.archive_md5:
            return {**identity, "official": True}
        with progress_bar(f"checking {self.layout.title} md5 sums", len(self._needed)) as advance:
            digests = {}
            for name, digest, _ in self._members(keep=False):
                digests[name] = digest
                advance(1)
        wrong = sorted(n for n, d in digests.items() if d != self.layout.md5[n])
        if not wrong:
            return {**identity, "official": True}
        if not self.accept_unverified:
            raise DataError(
                f"{self.location}: {', '.join(wrong)} do not match the official {self.layout.title} md5 sums; "
                f"download the official {self.layout.archive}, or pass {FLAG} if you trust this copy"
            )
        return {**identity, "official": False, "md5": digests}

    def _unpickle(self, name: str, digest: str, payload: bytes) -> dict:
        if digest != self.fingerprint.get("md5", self.layout.md5)[name]:
            raise DataError(f"{self.location}: {name} changed while being read; prepare again")
        try:
            batch = _ArrayUnpickler(payload).load()
        except Exception as exc:  # any failure to parse a pickle is bad input
            raise DataError(
                f"{self.location}: {name} is not a readable CIFAR batch ({exc}); download {self.layout.archive} again"
            ) from exc
        if not isinstance(batch, dict):
            raise DataError(f"{self.location}: {name} is not a CIFAR batch (a {type(batch).__name__}, not a dict)")
        return batch

    def _parse(self, name: str, batch: dict) -> Split:
        data = batch.get("data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
            raise DataError(
                f"{self.location}: {name} has no uint8 N×{IMAGE_BYTES} 'data' array; "
                f"it is not a {self.layout.title} batch"
            )
        labels = []
        for key, classes in zip(self.layout.label_keys, self.layout.classes):
            try:
                values = np.asarray(batch.get(key, ()))
            except (ValueError, TypeError):  # ragged lists
                values = np.zeros(0, np.float64)
            if (values.dtype.kind not in "iu" or values.shape != (len(data),)
                    or (values.size and (values.min() < 0 or values.max() >= classes))):
                raise DataError(
                    f"{self.location}: {name} needs {len(data)} '{key}' in 0..{classes - 1}; "
                    f"it is not a {self.layout.title} batch"
                )
            labels.append(values.astype(np.int16))
        return Split(data.reshape(-1, 3, 32, 32), tuple(labels))

    def _class_names(self, meta: dict, key: str) -> list[str]:
        names = meta.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
            raise DataError(f"{self.location}: {self.layout.meta} has no list of '{key}'; "
                            f"it is not a {self.layout.title} archive")
        return [n if isinstance(n, str) else n.decode("latin1") for n in names]

    @cached_property
    def data(self) -> dict:
        """{"train": Split, "val": Split, "classes": {key: [names]}} read from the archive."""
        parsed, classes = {}, {}
        with progress_bar(f"reading {self.layout.title}", len(self._needed)) as advance:
            for name, digest, payload in self._members(keep=True):
                batch = self._unpickle(name, digest, payload)
                if name == self.layout.meta:
                    classes = {key: self._class_names(batch, key) for key in self.layout.class_keys}
                else:
                    parsed[name] = self._parse(name, batch)
                advance(1)

        def join(names: tuple[str, ...]) -> Split:
            parts = [parsed[n] for n in names]
            return Split(
                np.concatenate([p.pixels for p in parts]),
                tuple(np.concatenate(ls) for ls in zip(*(p.labels for p in parts))),
            )

        return {"train": join(self.layout.train), "val": join(self.layout.test), "classes": classes}


class CifarSource:
    """One or both CIFAR datasets as a source of rows; labels stay with their source."""

    def __init__(self, archives: list[CifarArchive]) -> None:
        self.archives = archives
        self.names = [a.layout.name for a in archives]
        self.fingerprint = {"cifar": [a.fingerprint for a in archives]}

    def count(self, split: str) -> int:
        return sum(len(a.data[split].pixels) for a in self.archives)

    def chunks(self, split: str) -> Iterator[Rows]:
        for code, archive in enumerate(self.archives):
            part = archive.data[split]
            for start in range(0, len(part.pixels), CHUNK):
                stop = min(start + CHUNK, len(part.pixels))
                labels = [ls[start:stop] for ls in part.labels]
                yield Rows.build(
                    part.pixels[start:stop],
                    source=code,
                    label=labels[0],
                    coarse_label=labels[1] if len(labels) > 1 else None,
                    index=np.arange(start, stop),
                )

    def describe(self) -> dict:
        return {
            a.layout.name: {"location": str(a.location), **a.fingerprint, "classes": a.data["classes"]}
            for a in self.archives
        }
