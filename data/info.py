"""What a prepared folder holds: counts and bytes per split, and a PNG grid of sample images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from data.reader import open_split
from data.shards import read_manifest, verify

PAD = 2


def summary(folder: Path, *, verify_sha256: bool = True) -> dict:
    """``{"path", "splits": {split: {"rows", "shards", "bytes"}}, "manifest"}``, after checking the shards."""
    manifest = read_manifest(folder)
    verify(folder, manifest, full=verify_sha256)
    splits = {
        name: {"rows": entry["rows"], "shards": len(entry["shards"]), "bytes": sum(s["bytes"] for s in entry["shards"])}
        for name, entry in manifest["splits"].items()
    }
    return {"path": str(folder), "splits": splits, "manifest": manifest}


def image_grid(images: np.ndarray, columns: int = 8, scale: int = 2) -> Image.Image:
    """(n, 3, 32, 32) uint8 images tiled row by row on a white canvas, enlarged ``scale`` times."""
    n, _, height, width = images.shape
    rows = max(1, -(-n // columns))
    canvas = np.full((rows * (height + PAD) + PAD, columns * (width + PAD) + PAD, 3), 255, np.uint8)
    for i, image in enumerate(images):
        top, left = PAD + (i // columns) * (height + PAD), PAD + (i % columns) * (width + PAD)
        canvas[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def write_grid(folder: Path, out: Path, *, split: str = "train", count: int = 64, seed: int = 0) -> int:
    """Write a PNG grid of ``count`` images drawn with ``seed`` from ``split``; return how many it shows."""
    with open_split(folder, split, verify_sha256=False) as reader:
        chosen = np.sort(np.random.default_rng(seed).choice(len(reader), min(count, len(reader)), replace=False))
        images = reader.images(chosen)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    image_grid(images).save(tmp, format="PNG")
    os.replace(tmp, out)
    return len(images)
