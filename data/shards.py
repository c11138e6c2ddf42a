"""Arrow IPC shards and their ``manifest.json``: schema, writing, verification."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from rnncodec.data.errors import DataError, RnncodecError, shown
from rnncodec.data.files import check_file_name, file_digest, read_limited
from rnncodec.data.progress import progress_bar

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
DEFAULT_ROWS_PER_SHARD = 65536  # 201 MB per shard
SPLITS = ("train", "val")

SCHEMA = pa.schema(
    [
        pa.field("pixels", pa.binary(IMAGE_BYTES), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("coarse_label", pa.int16(), nullable=False),
        pa.field("source", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("rotation", pa.int8(), nullable=False),
    ],
    metadata={
        "pixels": "uint8 3x32x32, channel-major (CIFAR layout)",
        "label": "class label within its source, -1 when none",
        "coarse_label": "CIFAR-100 coarse label, -1 when none",
        "source": "dataset or photo each row comes from",
        "index": "row index in the original source split (photos: tile index in the image)",
        "rotation": "counter-clockwise quarter turns applied",
    },
)


@dataclass(frozen=True)
class Rows:
    """A chunk of images and their provenance; ``source`` holds codes into a list of names."""

    pixels: np.ndarray  # (n, 3, 32, 32) uint8
    label: np.ndarray  # (n,) int16
    coarse_label: np.ndarray  # (n,) int16
    source: np.ndarray  # (n,) int32
    index: np.ndarray  # (n,) int64
    rotation: np.ndarray  # (n,) int8

    @classmethod
    def build(
        cls,
        pixels: np.ndarray,
        *,
        source: int,
        label: np.ndarray | None = None,
        coarse_label: np.ndarray | None = None,
        index: np.ndarray | None = None,
    ) -> Rows:
        """Rows of one source, unrotated; missing labels are -1 and the index counts from 0."""
        n = len(pixels)
        return cls(
            pixels=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(n, *IMAGE_SHAPE),
            label=np.full(n, -1, np.int16) if label is None else np.asarray(label, np.int16),
            coarse_label=np.full(n, -1, np.int16) if coarse_label is None else np.asarray(coarse_label, np.int16),
            source=np.full(n, source, np.int32),
            index=np.arange(n, dtype=np.int64) if index is None else np.asarray(index, np.int64),
            rotation=np.zeros(n, np.int8),
        )

    def __len__(self) -> int:
        return len(self.pixels)

    def take(self, selection: np.ndarray) -> Rows:
        """The rows picked by a boolean mask or an index array."""
        return Rows(*(getattr(self, f)[selection] for f in self.__dataclass_fields__))

    def rotated(self, quarter_turns: int) -> Rows:
        """The same rows turned counter-clockwise by ``quarter_turns`` × 90°."""
        if quarter_turns % 4 == 0:
            return self
        pixels = np.ascontiguousarray(np.rot90(self.pixels, quarter_turns, axes=(2, 3)))
        rotation = ((self.rotation + quarter_turns) % 4).astype(np.int8)
        return Rows(pixels, self.label, self.coarse_label, self.source, self.index, rotation)

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


def _record_batch(rows: Rows, names: Sequence[str]) -> pa.RecordBatch:
    n = len(rows)
    pixels = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(IMAGE_BYTES), n, [None, pa.py_buffer(np.ascontiguousarray(rows.pixels).reshape(-1))]
    )
    codes, inverse = np.unique(rows.source, return_inverse=True)
    source = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array([names[c] for c in codes], pa.string())
    )
    columns = [pixels, rows.label, rows.coarse_label, source, rows.index, rows.rotation]
    return pa.RecordBatch.from_arrays([pa.array(c) if isinstance(c, np.ndarray) else c for c in columns], schema=SCHEMA)


class ShardWriter:
    """Writes one split as ``{split}-00000.arrow``… of at most ``rows_per_shard`` rows, one record batch each."""

    def __init__(self, folder: Path, split: str, source_names: Sequence[str], rows_per_shard: int) -> None:
        self.folder, self.split, self.names, self.rows_per_shard = (
            Path(folder),
            split,
            list(source_names),
            rows_per_shard,
        )
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self.shards: list[dict] = []

    def write(self, rows: Rows) -> None:
        """Queue rows; every full shard is written at once."""
        if len(rows):
            self._pending.append(rows)
            self._pending_rows += len(rows)
        while self._pending_rows >= self.rows_per_shard:
            everything = Rows.concat(self._pending)
            self._flush(everything.take(slice(0, self.rows_per_shard)))
            rest = everything.take(slice(self.rows_per_shard, None))
            self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> dict:
        """Write the last partial shard; return the split's manifest entry."""
        if self._pending_rows:
            self._flush(Rows.concat(self._pending))
            self._pending, self._pending_rows = [], 0
        return {"rows": sum(s["rows"] for s in self.shards), "shards": self.shards}

    def _flush(self, rows: Rows) -> None:
        path = self.folder / f"{self.split}-{len(self.shards):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_batch(_record_batch(rows, self.names))
        self.shards.append(
            {"file": path.name, "rows": len(rows), "bytes": path.stat().st_size, "sha256": file_digest(path)}
        )


MAX_MANIFEST_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50


def parse_manifest(raw: bytes, where: str, fix: str) -> dict:
    """A manifest from its bytes, checked for format and shape before anything trusts it: a plain name and
    a key; splits among ``SPLITS``, each with its row count and shards; every shard a plain file name of
    its folder with a row count, a size and a sha256, the rows adding up to the split's."""
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
            raise ValueError("no splits")
        current = _count(manifest.get("format")) and manifest["format"] == FORMAT_VERSION
        if current:
            check_file_name(manifest.get("name"), f"{where}: the name")
            if not isinstance(manifest.get("key"), str):
                raise ValueError("no key")
            for split, entry in manifest["splits"].items():
                if split not in SPLITS:
                    raise ValueError(f"unknown split {split!r}")
                if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list) or not _count(entry.get("rows")):
                    raise ValueError(f"{split} has no shard list or row count")
                for shard in entry["shards"]:
                    check_file_name(shard.get("file") if isinstance(shard, dict) else None, f"{where}: shard file")
                    if not (_count(shard.get("rows")) and _count(shard.get("bytes"))
                            and isinstance(shard.get("sha256"), str) and _SHA256.fullmatch(shard["sha256"])):
                        raise ValueError(f"shard {shown(shard['file'])} lacks rows, bytes or sha256")
                if sum(shard["rows"] for shard in entry["shards"]) != entry["rows"]:
                    raise ValueError(f"{split} rows differ from its shards'")
    except RnncodecError as exc:
        raise DataError(str(exc)) from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise DataError(f"{where} is unreadable or incomplete ({shown(str(exc))}); {fix}") from None
    if not current:
        raise DataError(f"{where} was written in data format {shown(manifest.get('format'))}, "
                        f"this version reads {FORMAT_VERSION}; prepare it again")
    return manifest


def read_manifest(folder: Path) -> dict:
    """The manifest of a prepared folder (see ``parse_manifest``)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise DataError(f"no such folder: {folder}; give a folder made by `rnncodec data prepare`")
    if not path.is_file():
        raise DataError(
            f"{folder} holds no {MANIFEST}: it is not a prepared dataset; run `rnncodec data prepare` first"
        )
    fix = f"delete {folder} and prepare it again"
    return parse_manifest(read_limited(path, "manifest", MAX_MANIFEST_BYTES, fix, DataError), str(path), fix)


def split_entry(manifest: dict, split: str, folder: Path) -> dict:
    """The manifest entry of one split, or a DataError naming the splits there are."""
    try:
        return manifest["splits"][split]
    except KeyError:
        raise DataError(f"{folder} has no split {split!r}; choose one of {sorted(manifest['splits'])}") from None


def verify(folder: Path, manifest: dict, splits: Iterable[str] | None = None, *, full: bool = True) -> None:
    """Check every shard's size (and sha256 when ``full``) against the manifest; DataError on any mismatch."""
    folder = Path(folder)
    shards = [s for name in (splits or manifest["splits"]) for s in split_entry(manifest, name, folder)["shards"]]
    fix = f"delete {folder} and run `rnncodec data prepare` again"
    with progress_bar("verifying shards", sum(s["bytes"] for s in shards) if full else None) as advance:
        for shard in shards:
            path = folder / shard["file"]
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                raise DataError(f"shard {path} is missing; {fix}")
            if size != shard["bytes"]:
                raise DataError(
                    f"shard {path} is truncated or altered ({size} bytes, manifest says {shard['bytes']}); {fix}"
                )
            if full and file_digest(path) != shard["sha256"]:
                raise DataError(f"shard {path} is altered (sha256 differs from the manifest); {fix}")
            advance(shard["bytes"] if full else 0)
