"""Image files: the one rule for reading them (codec inputs and training photographs alike), PNG
writing, folder listings and image grids.

The rule: the EXIF orientation is applied (the image as viewers show it); greyscale, palette, CMYK and
other colour modes are converted to RGB; 16-bit samples, grey or colour, are rounded to 8 bits
(v · 255 / 65535; Pillow's 32-bit "I" mode, which its decoders give 16-bit PGM files, counts as 16-bit);
an alpha channel or a transparent colour (PNG tRNS, GIF) is dropped when every pixel is opaque and
refused otherwise (the codec stores RGB only); floating-point images, animations and multi-page files
are refused, and so is any image above ``MAX_PIXELS`` (checked from the header, before a single pixel
is decoded).
"""

from __future__ import annotations

import io
import itertools
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

from rnncodec.data.errors import DataError
from rnncodec.data.files import open_regular, write_atomic

MAX_PIXELS = 1 << 26  # 67 megapixels: an 8192×8192 image; 192 MB as 8-bit RGB
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_TRANSPOSE = {  # EXIF orientation: the turn that shows the image as viewers do (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _rawmodes(img: Image.Image) -> list[str]:
    modes = []
    for tile in getattr(img, "tile", None) or []:
        args = tile.args if hasattr(tile, "args") else tile[3]
        modes.append(args if isinstance(args, str) else str(args[0]) if args else "")
    return modes


def _deep_colour(img: Image.Image) -> bool:
    """Whether Pillow would decode this file's 16-bit colour samples to their high byte only."""
    return len(img.getbands()) > 1 and any(";16" in m for m in _rawmodes(img))


def _opaque(alpha: np.ndarray, full: int, name: str) -> None:
    if alpha.min(initial=full) < full:
        raise DataError(f"{name} has transparent pixels and the codec stores RGB only; flatten it onto a "
                        "background first")


def _round(a: np.ndarray, top: int = 65535) -> np.ndarray:
    """Samples in 0..``top`` rounded to 8 bits."""
    return np.round(a.astype(np.float64) * (255 / top)).astype(np.uint8)


def _read_png16(file: BinaryIO, path: Path, size: tuple[int, int]) -> np.ndarray:
    """A 16-bit colour (or grey + alpha) PNG through pypng, which keeps all 16 bits, from the start of
    ``file`` (``path``'s); ``size`` is the one Pillow read from the header and checked."""
    import png

    try:
        file.seek(0)
        width, height, rows, info = png.Reader(file=file).asDirect()
        if (width, height) != size:
            raise DataError(f"{path} changed while being read; read it again")
        a = np.empty((height, width * info["planes"]), np.uint16)
        done = 0
        for row in itertools.islice(rows, height):
            a[done] = row
            done += 1
        if done < height:
            raise png.FormatError(f"{done} rows of {height}")
    except (png.Error, ValueError, OSError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable PNG ({exc}); re-export it") from None
    a = a.reshape(height, width, info["planes"])
    top = (1 << info["bitdepth"]) - 1  # below 65535 when an sBIT chunk names fewer significant bits
    if info["alpha"]:
        _opaque(a[:, :, -1], top, str(path))
        a = a[:, :, :-1]
    a = _round(a, top)
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF orientation; itself, not a copy, when it needs no turn (a 64-megapixel
    image held three times over costs 0.8 GB)."""
    method = _TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation))
    return img if method is None else img.transpose(method)


def _oriented(rgb: np.ndarray, img: Image.Image) -> np.ndarray:
    """``rgb``, decoded from ``img``'s file, turned by the file's EXIF orientation."""
    method = _TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation))
    return rgb if method is None else np.asarray(Image.fromarray(rgb).transpose(method))


def to_rgb8(img: Image.Image, name: str = "image") -> np.ndarray:
    """Apply the module's rule to an opened Pillow image (16-bit colour excepted: see ``load_image``);
    returns H×W×3 uint8."""
    if img.mode == "F":
        raise DataError(f"{name} holds floating-point pixels; convert it to an 8- or 16-bit image first")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float64)
        if "transparency" in img.info:  # a transparent grey level
            _opaque(np.asarray(grey != img.info["transparency"], np.uint8), 1, name)
        return np.repeat(_round(np.clip(grey, 0, 65535))[:, :, None], 3, axis=2)
    if "transparency" in img.info:  # a transparent colour or palette entry
        _opaque(np.asarray(img.convert("RGBA").getchannel("A")), 255, name)
    if img.mode in _ALPHA_MODES:
        _opaque(np.asarray(img.getchannel("A")), 255, name)
    return _rgb_by_strips(img)


def _rgb_by_strips(img: Image.Image, strip_pixels: int = 1 << 20) -> np.ndarray:
    """H×W×3 uint8 of an 8-bit image, converted and copied out a strip of rows at a time: ``np.asarray``
    of the whole image holds its bytes twice beside Pillow's own copy (``tobytes`` joins its chunks), which
    took a 64-megapixel photograph's preparation to 3.2× its decoded size at peak."""
    out = np.empty((img.height, img.width, 3), np.uint8)
    rows = max(1, strip_pixels // img.width)
    for top in range(0, img.height, rows):
        strip = img.crop((0, top, img.width, min(top + rows, img.height)))
        out[top : top + strip.height] = np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))
    return out


@contextmanager
def _open(path: Path) -> Iterator[tuple[Image.Image, BinaryIO]]:
    """``path`` opened as an image and as a file, after what can be checked before decoding: size and
    frame count."""
    with open_regular(path, "image", DataError) as file, _checked(file, path) as img:
        yield img, file


def _checked(file: BinaryIO, path: Path) -> Image.Image:
    """Pillow's image of ``file``, with its header read and checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged metadata (EXIF, TIFF tags)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
            width, height = img.size
            frames = getattr(img, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path} declares more than {MAX_PIXELS:,} pixels; split it into smaller images") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file fails Pillow's plugins in any way (TypeError, …)
        raise DataError(f"{path} is not a readable image ({_first_line(exc)}); give a PNG, JPEG or other Pillow "
                        "format") from None
    problem = None
    if width * height > MAX_PIXELS:
        problem = (f"{path} is {width}×{height} = {width * height:,} pixels, above the limit of {MAX_PIXELS:,}; "
                   "split it into smaller images")
    elif width < 1 or height < 1:
        problem = f"{path} has no pixels ({width}×{height}); give a real image"
    elif frames > 1:
        problem = (f"{path} holds {frames} frames (an animation or a multi-page file) and the codec stores one "
                   "still image; extract the frame you want first")
    if problem:
        img.close()
        raise DataError(problem)
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header, under the same checks as ``load_image``."""
    with _open(Path(path)) as (img, _):
        return img.size


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 under the module's rule."""
    path = Path(path)
    try:
        with _open(path) as (img, file), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if img.format == "PNG" and _deep_colour(img):
                return _oriented(_read_png16(file, path, img.size), img)
            if _deep_colour(img):
                raise DataError(f"{path} holds 16-bit colour that Pillow cannot read in full; "
                                "convert it to a 16-bit PNG or to 8 bits first")
            img.load()
            return to_rgb8(_upright(img), str(path))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in _open
        raise DataError(f"{path} is not a readable image ({_first_line(exc)}); re-export it") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Save H×W×3 uint8 as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


def list_images(folder: str | Path, recursive: bool = False, suffixes: Sequence[str] = SUFFIXES) -> list[Path]:
    """Image files in ``folder`` (with ``recursive``, in its sub-folders too), sorted. An image name that
    is a broken link, pipe or device is refused rather than skipped: a silently smaller set would change
    every mean computed over it. Folders named like images are passed over."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder; give a folder of images" if folder.exists()
                        else f"no such folder: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in suffixes and not p.is_dir())
    for path in files:
        if not path.is_file():
            what = "a broken link" if not path.exists() else "not a regular file (a device, pipe or socket)"
            raise DataError(f"{path} is {what}; remove it from {folder} or make it an image file")
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(suffixes)})")
    return files


def image_grid(rows: Sequence[np.ndarray], scale: int = 1, pad: int = 2) -> np.ndarray:
    """Rows of N×3×H×W uint8 images (rows may be shorter than the longest) on a white H×W×3 canvas,
    each pixel shown as a ``scale``×``scale`` block so small patches stay visible."""
    height, width = rows[0].shape[2] * scale, rows[0].shape[3] * scale
    columns = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = image.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
    return canvas
