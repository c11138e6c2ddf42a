"""Reading and writing images, and moving between 8-bit pixels and the model's input range.

The rule for inputs that are not 8-bit RGB: greyscale, palette, CMYK and other colour modes
are converted to RGB; 16-bit samples are rounded to 8 bits (v · 255 / 65535); an alpha channel
is dropped when every pixel is opaque and refused otherwise (the codec stores RGB only);
floating-point images are refused.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from codec.errors import CodecError
from codec.model import STRIDE

_UMASK = os.umask(0)
os.umask(_UMASK)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def to_rgb8(img: Image.Image, name: str = "image") -> np.ndarray:
    """Apply the input rule to a Pillow image; returns H×W×3 uint8."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and a.max(initial=0) <= 255:
            a = a * 257  # "I" holding 8-bit data
        a = np.clip(np.round(a * 255 / 65535), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise CodecError(f"{name} holds floating-point pixels; convert it to an 8- or 16-bit image first")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min(initial=255) < 255:
            raise CodecError(f"{name} has transparent pixels and the codec stores RGB only; "
                             "flatten it onto a background first")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 under the module's input rule."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"no such image file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb8(img, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CodecError(f"{path} is not a readable image ({exc}); give a PNG, JPEG or other Pillow format") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodecError(f"no such folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CodecError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Save H×W×3 uint8 as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def to_input(pixels: Tensor) -> Tensor:
    """uint8 N×3×H×W → float in [-0.5, 0.5], the model's input range."""
    return pixels.float().div_(255).sub_(0.5)


def to_pixels(x: Tensor) -> Tensor:
    """Model range → uint8, rounding to the nearest level."""
    return x.add(0.5).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def pad_to_stride(x: Tensor, multiple: int = STRIDE) -> Tensor:
    """Pad N×C×H×W on the bottom and right by edge replication to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
