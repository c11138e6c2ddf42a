"""Photographs as training data: the built-in ``sample`` photos and folders of PNG/JPEG files."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from rnncodec.data.errors import DataError
from rnncodec.data.images import image_size, list_images, load_image
from rnncodec.data.progress import progress_bar
from rnncodec.data.shards import Rows

TILE = 32

# Colour photographs shipped inside the scikit-image wheel (never fetched with pooch); the two views of
# the motorcycle stereo pair are one group, so validation never sees a twin of a training photo.
SAMPLE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed: `pip install scikit-image` to use the sample source")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sample_photos() -> list[tuple[str, Path]]:
    folder = _skimage_data_dir()
    photos = [(name, folder / name) for name in SAMPLE_PHOTOS if (folder / name).is_file()]
    if not photos:
        raise DataError(
            f"no sample photographs found in {folder}: "
            "reinstall scikit-image (`pip install --force-reinstall scikit-image`)"
        )
    return photos


def sample_images() -> list[tuple[str, np.ndarray]]:
    """The built-in sample photographs as (name, H×W×3 uint8), only those present in skimage/data."""
    return [(Path(name).stem, load_image(path)) for name, path in _sample_photos()]


def tile(image: np.ndarray) -> np.ndarray:
    """Non-overlapping 32×32 patches of an H×W×3 image as (n, 3, 32, 32), row-major; ragged edges dropped."""
    rows, cols = image.shape[0] // TILE, image.shape[1] // TILE
    grid = image[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE, 3)
    return np.ascontiguousarray(grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, TILE, TILE))


def png_sizes(patches: np.ndarray) -> np.ndarray:
    """Bytes each (3, 32, 32) patch takes as a PNG: Toderici et al.'s measure of how hard it is to compress."""
    sizes = np.empty(len(patches), np.int64)
    for i, patch in enumerate(patches):
        buffer = io.BytesIO()
        Image.fromarray(patch.transpose(1, 2, 0)).save(buffer, format="PNG")
        sizes[i] = buffer.tell()
    return sizes


def hardest(patches: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the ``k`` patches with the largest PNG; ties keep the earlier patch."""
    if k >= len(patches):
        return np.arange(len(patches))
    return np.sort(np.argsort(-png_sizes(patches), kind="stable")[:k])


def _tile_count(path: Path) -> int:
    width, height = image_size(path)
    return (width // TILE) * (height // TILE)


class PhotoSource:
    """Photographs tiled into 32×32 patches; whole photos are held out for validation."""

    def __init__(
        self,
        photos: list[tuple[str, Path]],
        identity: dict,
        *,
        hard_patches: int | None,
        val_fraction: float,
        groups: list[str] | None = None,
    ) -> None:
        self.names = [name for name, _ in photos]
        self.paths = [path for _, path in photos]
        self.hard_patches = hard_patches
        with progress_bar("measuring photos", len(photos)) as advance:
            tiles = []
            for path in self.paths:
                tiles.append(_tile_count(path))
                advance(1)
        self.rows = np.minimum(tiles, hard_patches) if hard_patches else np.asarray(tiles)
        if not self.rows.sum():
            raise DataError(f"none of the {len(photos)} photos is at least {TILE}×{TILE} pixels; add larger photos")
        val = _held_out(groups or self.names, self.rows, val_fraction)
        self.members = {"train": [i for i in range(len(photos)) if i not in val], "val": sorted(val)}
        self.fingerprint = {**identity, "hard_patches": hard_patches, "val_fraction": val_fraction}

    def count(self, split: str) -> int:
        return int(self.rows[self.members[split]].sum())

    def chunks(self, split: str) -> Iterator[Rows]:
        for code in self.members[split]:
            patches = tile(load_image(self.paths[code]))
            keep = hardest(patches, self.hard_patches) if self.hard_patches else np.arange(len(patches))
            if len(keep) != self.rows[code]:
                raise DataError(f"{self.paths[code]} changed while being prepared; prepare again")
            yield Rows.build(patches if len(keep) == len(patches) else patches[keep], source=code, index=keep)

    def describe(self) -> dict:
        return {
            "photos": {split: [self.names[i] for i in members] for split, members in self.members.items()},
            "patches_per_photo": dict(zip(self.names, self.rows.tolist())),
        }


def _held_out(groups: list[str], rows: np.ndarray, fraction: float) -> set[int]:
    """Photos for validation, whole groups at a time (a stereo pair is one group), taken in an order fixed
    by the groups' name hashes (no seed: every run validates on the same photos) while they fit in
    ``fraction`` of the patches; at least one group when there are two."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    names = sorted(members, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    sizes = {g: int(rows[members[g]].sum()) for g in names}
    if fraction <= 0 or len(names) < 2:
        return set()
    budget, taken, chosen = fraction * rows.sum(), 0, []
    for group in names:
        if sizes[group] and taken + sizes[group] <= budget:
            chosen.append(group)
            taken += sizes[group]
    if not chosen:
        chosen.append(min((g for g in names if sizes[g]), key=sizes.get))
    return {i for g in chosen for i in members[g]}


def sample_source(*, hard_patches: int | None = None, val_fraction: float = 0.1) -> PhotoSource:
    """The built-in ``sample`` source: the colour photographs inside the installed scikit-image."""
    photos = _sample_photos()
    identity = {"sample": [(name, path.stat().st_size) for name, path in photos]}
    groups = [name.split(".")[0].removesuffix("_left").removesuffix("_right") for name, _ in photos]
    return PhotoSource(photos, identity, hard_patches=hard_patches, val_fraction=val_fraction, groups=groups)


def folder_source(folder: Path, *, hard_patches: int | None = None, val_fraction: float = 0.1) -> PhotoSource:
    """Every image under ``folder`` (recursively), named by its path relative to it."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"photo folder {folder} {problem}; give folder:PATH an existing folder of PNG/JPEG files")
    paths = list_images(folder, recursive=True)
    photos = [(p.relative_to(folder).as_posix(), p) for p in paths]
    for name, _ in photos:
        try:
            name.encode()
        except UnicodeEncodeError:  # the shards keep names as UTF-8 strings
            raise DataError(f"{folder}: the file name {ascii(name)} is not valid UTF-8; rename it") from None
    listing = hashlib.sha256(
        json.dumps([(name, p.stat().st_size, p.stat().st_mtime_ns) for name, p in photos]).encode()
    ).hexdigest()
    identity = {"folder": str(folder), "files": listing}
    return PhotoSource(photos, identity, hard_patches=hard_patches, val_fraction=val_fraction)


def held_out_photos(manifest: dict, limit: int = 1) -> list[tuple[str, np.ndarray]]:
    """The first ``limit`` validation photographs of a prepared photo dataset (``sample`` or a folder), read
    from where they were prepared, as (name, H×W×3 uint8); [] for other sources or when they are gone.
    Only files inside that folder and unchanged in size are read: the manifest says which ones."""
    try:
        fingerprint = manifest["params"]["fingerprint"]
        names = [str(n) for n in manifest["source"]["photos"]["val"]]
        if "sample" in fingerprint:
            folder, sizes = _skimage_data_dir(), {str(n): size for n, size in fingerprint["sample"]}
        elif "folder" in fingerprint:
            folder, sizes = Path(fingerprint["folder"]), None
        else:
            return []
    except (DataError, KeyError, TypeError, ValueError):
        return []
    found = []
    for name in names:
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            continue
        if sizes is not None and sizes.get(name) != path.stat().st_size:
            continue
        try:
            found.append((name, load_image(path)))
        except DataError:
            continue
        if len(found) == limit:
            break
    return found
