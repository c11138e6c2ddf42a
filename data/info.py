"""What a prepared folder holds: counts and bytes per split, and a PNG grid of sample images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnncodec.data.errors import DataError
from rnncodec.data.images import image_grid, save_png
from rnncodec.data.reader import open_split
from rnncodec.data.shards import read_manifest, verify

COLUMNS = 8


def summary(folder: Path, *, verify_sha256: bool = True) -> dict:
    """``{"path", "splits": {split: {"rows", "shards", "bytes"}}, "manifest"}``, after checking the shards."""
    manifest = read_manifest(folder)
    verify(folder, manifest, full=verify_sha256)
    splits = {
        name: {"rows": entry["rows"], "shards": len(entry["shards"]), "bytes": sum(s["bytes"] for s in entry["shards"])}
        for name, entry in manifest["splits"].items()
    }
    return {"path": str(folder), "splits": splits, "manifest": manifest}


def write_grid(folder: Path, out: Path, *, split: str = "train", count: int = 64, seed: int = 0) -> int:
    """Write a PNG grid of ``count`` images drawn with ``seed`` from ``split``, 8 to a row and each pixel
    shown 2×2; return how many it shows."""
    with open_split(folder, split, verify_sha256=False) as reader:
        if not len(reader):
            raise DataError(f"the {split} split of {folder} holds no images; show another with --split")
        chosen = np.sort(np.random.default_rng(seed).choice(len(reader), min(count, len(reader)), replace=False))
        images = reader.images(chosen)
    save_png(out, image_grid([images[i : i + COLUMNS] for i in range(0, len(images), COLUMNS)], scale=2))
    return len(images)
