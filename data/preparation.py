"""``prepare``: turn a source into verified Arrow shards in the cache, built once and shared by every trial."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from pathlib import Path

import numpy as np

from rnncodec.data import cache
from rnncodec.data.cifar import CIFAR10, CIFAR100, LAYOUTS, CifarArchive, CifarSource, locate
from rnncodec.data.download import download_archive
from rnncodec.data.errors import DataError
from rnncodec.data.files import write_json
from rnncodec.data.photos import PhotoSource, folder_source, sample_source
from rnncodec.data.progress import progress_bar
from rnncodec.data.shards import DEFAULT_ROWS_PER_SHARD, FORMAT_VERSION, MANIFEST, ShardWriter, read_manifest, verify
from rnncodec.data.sources import CIFAR, FOLDER, check_source

MAX_ROTATIONS = 4


def open_source(
    source: str,
    *,
    root: str | Path | None = None,
    cache_dir: Path | None = None,
    accept_unverified: bool = False,
    hard_patches: int | None = None,
    val_fraction: float = 0.1,
) -> CifarSource | PhotoSource:
    """The source named by ``source`` (see ``sources.SOURCES``); CIFAR archives are located, downloaded and
    checked here."""
    check_source(source)
    if source in CIFAR:
        if hard_patches:
            raise DataError("--hard-patches applies to photo sources (sample, folder:PATH), not to CIFAR; drop it")
        layouts = [CIFAR10, CIFAR100] if source == "cifar" else [LAYOUTS[source]]
        cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
        return CifarSource(
            [
                CifarArchive(
                    layout,
                    locate(layout, Path(root)) if root else download_archive(layout, cache_dir),
                    accept_unverified=accept_unverified,
                )
                for layout in layouts
            ]
        )
    if root is not None:
        raise DataError("--root applies to CIFAR sources only; give photographs as --source folder:PATH")
    if source == "sample":
        return sample_source(hard_patches=hard_patches, val_fraction=val_fraction)
    return folder_source(Path(source.removeprefix(FOLDER)), hard_patches=hard_patches, val_fraction=val_fraction)


def _check_numbers(
    rotations: int, size: int | None, seed: int, rows_per_shard: int, hard_patches: int | None, val_fraction: float
) -> None:
    if not 1 <= rotations <= MAX_ROTATIONS:
        raise DataError(f"--rotations {rotations} is not a number of quarter turns; use 1 (none), 2 (×2) up to 4 (×4)")
    if size is not None and size < 1:
        raise DataError(f"--size {size} must be a positive number of training images; omit it to keep them all")
    if not 0 <= seed < 2**32:
        raise DataError(f"--seed {seed} must be in 0..4294967295")
    if rows_per_shard < 1:
        raise DataError(f"--rows-per-shard {rows_per_shard} must be positive; the default is {DEFAULT_ROWS_PER_SHARD}")
    if hard_patches is not None and hard_patches < 1:
        raise DataError(
            f"--hard-patches {hard_patches} must be a positive number of patches per photo; omit it to keep all"
        )
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1); 0.1 holds out a tenth of the photo patches")


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("rnncodec", "numpy", "pyarrow", "pillow", "scikit-image"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _training_mask(count: int, rotations: int, size: int | None, seed: int | None, source: str) -> np.ndarray:
    """Which of the ``count × rotations`` augmented images (rotation-major) the training split keeps."""
    pool = count * rotations
    if size is None:
        return np.ones(pool, bool)
    if size > pool:
        raise DataError(
            f"--size {size} exceeds the {pool} training images {source} gives with --rotations {rotations}; "
            "lower --size or raise --rotations"
        )
    keep = np.zeros(pool, bool)
    keep[np.random.default_rng(seed).choice(pool, size, replace=False)] = True
    return keep


def _write(folder: Path, src: CifarSource | PhotoSource, manifest: dict, rows_per_shard: int) -> None:
    params = manifest["params"]
    rotations = params["rotations"]
    count = src.count("train")
    keep = _training_mask(count, rotations, params["size"], params["seed"], params["source"])
    splits = {}
    with progress_bar("writing training shards", count) as advance:
        writer, offset = ShardWriter(folder, "train", src.names, rows_per_shard), 0
        for rows in src.chunks("train"):
            for turns in range(rotations):
                chosen = keep[turns * count + offset : turns * count + offset + len(rows)]
                if chosen.any():
                    writer.write(rows.take(chosen).rotated(turns))
            offset += len(rows)
            advance(len(rows))
        splits["train"] = writer.close()
    with progress_bar("writing validation shards", src.count("val")) as advance:
        writer = ShardWriter(folder, "val", src.names, rows_per_shard)
        for rows in src.chunks("val"):
            writer.write(rows)
            advance(len(rows))
        splits["val"] = writer.close()
    manifest.update(source=src.describe(), splits=splits, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(folder / MANIFEST, manifest)


def prepare(
    source: str,
    *,
    root: str | Path | None = None,
    rotations: int = 1,
    size: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    accept_unverified: bool = False,
    hard_patches: int | None = None,
    val_fraction: float = 0.1,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    force: bool = False,
) -> Path:
    """Prepare ``source`` as Arrow shards (or reuse the verified cache with the same parameters); return its folder.

    ``rotations`` K keeps each training image in K quarter-turn orientations; ``size`` then draws that many
    training images from the augmented set with ``seed`` (all of them when None). Validation (CIFAR test
    sets, or photos held out whole) is never augmented or subsampled. The folder is ``out`` if given,
    else a folder of ``cache_dir`` (default ``$RNNCODEC_CACHE`` or ``~/.cache/rnncodec``) named by the
    parameters' hash. ``force`` rebuilds an existing folder.
    """
    _check_numbers(rotations, size, seed, rows_per_shard, hard_patches, val_fraction)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
    src = open_source(
        source,
        root=root,
        cache_dir=cache_dir,
        accept_unverified=accept_unverified,
        hard_patches=hard_patches,
        val_fraction=val_fraction,
    )
    kind = "folder" if source.startswith(FOLDER) else source
    params = {
        "format": FORMAT_VERSION,
        "source": kind,
        "rotations": rotations,
        "size": size,
        "seed": seed if size is not None else None,  # without --size the seed changes nothing: share the cache
        "rows_per_shard": rows_per_shard,
        "fingerprint": src.fingerprint,
    }
    key = cache.cache_key(params)
    subset = f"{size}-s{seed}" if size is not None else "all"
    final = Path(out).expanduser().resolve() if out else cache_dir / f"{kind}-r{rotations}-{subset}-{key[:12]}"
    if final.exists() and not (final / MANIFEST).is_file():
        if not final.is_dir() or any(final.iterdir()):
            raise DataError(f"{final} exists and is not a prepared dataset; choose a new or empty --out folder")
        final.rmdir()
    elif final.exists() and force:
        cache.remove(final)
    manifest = {
        "format": FORMAT_VERSION,
        "name": final.name,
        "key": key,
        "params": {**params, "requested": {"source": source, "root": str(root) if root else None, "seed": seed}},
        "versions": _versions(),
    }
    built = cache.build_once(final, lambda tmp: _write(tmp, src, manifest, rows_per_shard))
    existing = read_manifest(final)
    if existing["key"] != key:
        raise DataError(
            f"{final} holds a dataset prepared with other parameters; "
            "choose another --out or pass --force to replace it"
        )
    if not built:
        verify(final, existing)
    return final
