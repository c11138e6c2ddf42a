"""Reading shards: memory-mapped random access to whole batches, and a resumable per-epoch shuffle."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from rnncodec.data.errors import DataError
from rnncodec.data.remote import resolve
from rnncodec.data.shards import IMAGE_BYTES, IMAGE_SHAPE, SCHEMA, read_manifest, split_entry, verify

# Touching one 3 KiB row maps far more: a fault maps the whole page-cache folio around it, and folios
# reach 2 MiB (about 1.6 MB per random row on Linux 6.18 / ext4). So mapped memory is counted in 2 MiB
# regions of a shard: each region read since the last release counts in full.
REGION = 2 << 20
DEFAULT_MAX_MAPPED = 256 << 20
_LIBC = ctypes.CDLL(None, use_errno=True) if hasattr(mmap, "MADV_DONTNEED") else None


def _unmap_pages(buffer: pa.Buffer) -> bool:
    """Drop a mapped buffer's pages from this process (the page cache keeps them); False if unsupported."""
    if _LIBC is None:
        return False
    start = buffer.address & ~(mmap.PAGESIZE - 1)
    length = buffer.address + buffer.size - start
    return _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), mmap.MADV_DONTNEED) == 0


class ShardReader:
    """The images of a list of shards as one indexable set, memory-mapped rather than loaded.

    ``images(indices)`` gathers a batch with one numpy take per shard it touches. Resident memory stays
    flat whatever the set's size: before the shard regions read since the last release could map more
    than ``max_mapped_bytes``, their pages are dropped from the process (``madvise``; the page cache
    keeps them for the next access and for every other process reading the same shards).
    """

    def __init__(self, files: Sequence[Path], *, max_mapped_bytes: int = DEFAULT_MAX_MAPPED) -> None:
        self.files = [Path(f) for f in files]
        self.max_mapped_bytes = max_mapped_bytes
        self._maps: list[tuple[pa.RecordBatch, np.ndarray, pa.Buffer]] | None = None
        maps = self._map()
        self.shard_rows = np.array([len(pixels) for _, pixels, _ in maps], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)])
        self._bounded = sum(buffer.size for _, _, buffer in maps) > max_mapped_bytes
        self._read = [np.zeros(int(rows) * IMAGE_BYTES // REGION + 1, bool) for rows in self.shard_rows]
        self._touched = 0  # bytes of the regions read since the last release

    @staticmethod
    def _open(path: Path) -> tuple[pa.RecordBatch, np.ndarray, pa.Buffer]:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            if reader.num_record_batches != 1 or not reader.schema.equals(SCHEMA):
                raise DataError(f"{path} is not an rnncodec shard (other schema or layout); prepare the data again")
            batch = reader.get_batch(0)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(
                f"shard {path} is unreadable ({exc}); delete its folder and prepare the data again"
            ) from exc
        pixels = batch.column("pixels")
        buffer = pixels.buffers()[1]
        array = np.frombuffer(buffer, np.uint8, count=len(pixels) * IMAGE_BYTES, offset=pixels.offset * IMAGE_BYTES)
        return batch, array.reshape(len(pixels), *IMAGE_SHAPE), buffer

    def _map(self) -> list[tuple[pa.RecordBatch, np.ndarray, pa.Buffer]]:
        if self._maps is None:
            self._maps = [self._open(path) for path in self.files]
        return self._maps

    def release(self) -> None:
        """Drop the shards' mapped pages from this process; they are read again on demand."""
        dirty = [shard for shard, read in enumerate(self._read) if read.any()]
        if self._maps is not None and not all([_unmap_pages(self._maps[shard][2]) for shard in dirty]):
            self._maps = None  # no madvise here: unmap, and map again on the next access
        for shard in dirty:
            self._read[shard][:] = False
        self._touched = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _gather(self, shard: int, rows: np.ndarray, into: np.ndarray, out: np.ndarray) -> None:
        out[into] = self._map()[shard][1][rows]
        if self._bounded:
            regions = rows * IMAGE_BYTES // REGION
            fresh = np.unique(regions[~self._read[shard][regions]])
            self._read[shard][fresh] = True
            self._touched += len(fresh) * REGION

    def images(self, indices: np.ndarray | Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The images at ``indices`` as a (B, 3, 32, 32) uint8 array (written into ``out`` if given)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        if out is None:
            out = np.empty((len(idx), *IMAGE_SHAPE), np.uint8)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        bounds = np.searchsorted(ordered, self.offsets).tolist()
        for shard in np.flatnonzero(np.diff(bounds)).tolist():
            start, end = bounds[shard], bounds[shard + 1]
            while start < end:  # in steps that cannot map more than the budget left, at least a quarter of it
                stop = end
                if self._bounded:
                    if self._touched > self.max_mapped_bytes * 3 // 4:
                        self.release()
                    stop = min(end, start + max(1, (self.max_mapped_bytes - self._touched) // REGION))
                self._gather(shard, ordered[start:stop] - self.offsets[shard], order[start:stop], out)
                start = stop
        return out

    def column(self, name: str) -> np.ndarray:
        """A whole non-pixel column (``label``, ``coarse_label``, ``source``, ``index``, ``rotation``)."""
        if name == "pixels" or name not in SCHEMA.names:
            raise DataError(
                f"no column {name!r} to read whole; choose one of {SCHEMA.names[1:]}, and use images() for pixels"
            )
        chunks = [batch.column(name) for batch, _, _ in self._map()]
        if name == "source":
            return np.concatenate(
                [c.cast(pa.string()).to_numpy(zero_copy_only=False) for c in chunks] or [np.empty(0, object)]
            )
        return np.concatenate(
            [c.to_numpy() for c in chunks] or [np.empty(0, SCHEMA.field(name).type.to_pandas_dtype())]
        )

    def close(self) -> None:
        """Unmap the shards."""
        self._maps = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_split(
    location: str | Path,
    split: str = "train",
    *,
    verify_sha256: bool = True,
    cache_dir: str | Path | None = None,
    max_mapped_bytes: int = DEFAULT_MAX_MAPPED,
) -> ShardReader:
    """A reader of one split of a prepared folder (a local path, or a pyarrow URI copied once to the cache).

    Shard sizes and row counts are always checked against the manifest; ``verify_sha256`` also hashes
    every shard (about 1 s per GB), which a sweep does once before its trials open the split with False.
    """
    folder = resolve(location, cache_dir)
    manifest = read_manifest(folder)
    entry = split_entry(manifest, split, folder)
    verify(folder, manifest, [split], full=verify_sha256)
    reader = ShardReader([folder / s["file"] for s in entry["shards"]], max_mapped_bytes=max_mapped_bytes)
    if reader.shard_rows.tolist() != [s["rows"] for s in entry["shards"]]:
        raise DataError(
            f"the shards of {folder} hold other row counts than its manifest; delete it and prepare the data again"
        )
    return reader


class EpochSampler:
    """Batches of indices, reshuffled every epoch from (seed, epoch), resumable mid-epoch.

    Its state is ``{"epoch", "position", "seed"}``: ``position`` counts the images of the current epoch
    already handed out, so a checkpoint taken after a batch resumes with the next one.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size {batch_size} must be positive")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.stop = size - size % batch_size if drop_last else size
        if self.stop == 0:
            raise DataError(
                f"the split has {size} images, fewer than one batch of {batch_size}; "
                "lower the batch size or prepare more data"
            )
        self.seed, self.epoch, self.position = seed, 0, 0

    def __len__(self) -> int:
        return -(-self.stop // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of ``epoch`` (identity when not shuffling)."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        """The rest of the current epoch; the state moves to the next epoch with its last batch."""
        epoch, order = self.epoch, self.order(self.epoch)
        while self.epoch == epoch:
            start = self.position
            end = min(start + self.batch_size, self.stop)
            self.epoch, self.position = (epoch + 1, 0) if end >= self.stop else (epoch, end)
            yield order[start:end]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; refuse a position that does not fit this split."""
        try:
            epoch, position, seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"sampler state {state!r} lacks integer epoch, position and seed; pass what state_dict() returned"
            ) from exc
        if epoch < 0 or not 0 <= position < self.stop:
            raise DataError(
                f"sampler state {state!r} does not fit a split of {self.size} images; "
                "resume with the data it was saved with"
            )
        self.epoch, self.position, self.seed = epoch, position, seed
