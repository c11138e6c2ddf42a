"""Classical baselines measured through Pillow: JPEG (4:2:0 and 4:4:4), WebP and AVIF.

Settings follow CompressAI's ``compressai.utils.bench`` Pillow codecs, whose published Kodak
curves we overlay: ``Image.save(buf, format=..., quality=q)`` with every other option at
Pillow's default (for JPEG that is 4:2:0 chroma subsampling and no Huffman optimisation), a
quality sweep of 5, 10, …, 95, bpp from the size of the whole encoded file, and the
reconstruction decoded back to 8-bit RGB. ``jpeg444`` differs only by ``subsampling=0``.
The qualities of one image are coded in as many threads as torch uses (Pillow releases the GIL
while it codes), so each time is still one core's.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, features

from rnncodec.codec.errors import CodecError
from rnncodec.evaluation.quality import image_metrics_many

QUALITIES = tuple(range(5, 100, 5))


@dataclass(frozen=True)
class Baseline:
    key: str  # command-line name
    name: str  # the "name" of its results JSON
    format: str  # Pillow format
    options: dict[str, Any] = field(default_factory=dict)
    feature: str | None = None  # Pillow feature that must be present

    def available(self) -> bool:
        return self.feature is None or bool(features.check(self.feature))

    def description(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items()) or "Pillow defaults"
        return f"{self.name}. Pillow {Image.__version__} ({opts}), quality sweep"


BASELINES: dict[str, Baseline] = {
    b.key: b for b in (
        Baseline("jpeg", "JPEG", "JPEG", feature="jpg"),
        Baseline("jpeg444", "JPEG 4:4:4", "JPEG", {"subsampling": 0}, feature="jpg"),
        Baseline("webp", "WebP", "WEBP", feature="webp"),
        Baseline("avif", "AVIF", "AVIF", feature="avif"),
    )
}


def available_baselines() -> list[str]:
    """Keys of the baselines this Pillow can run."""
    return [k for k, b in BASELINES.items() if b.available()]


def parse_baselines(spec: str) -> list[str]:
    """``"jpeg,webp"`` → ``["jpeg", "webp"]``; ``""`` or ``"none"`` → ``[]``. Unknown or
    unavailable names raise :class:`CodecError`."""
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return []
    keys = []
    for key in (s.strip() for s in spec.split(",")):
        if key not in BASELINES:
            raise CodecError(f"unknown baseline {key!r}; choose from {', '.join(BASELINES)} (comma-separated) or none")
        if not BASELINES[key].available():
            raise CodecError(f"baseline {key!r} needs Pillow built with {BASELINES[key].feature} support, "
                             f"which this Pillow lacks; leave it out of --baselines")
        if key not in keys:
            keys.append(key)
    return keys


def encode_decode(image: np.ndarray, key: str, quality: int) -> tuple[bytes, np.ndarray, float, float]:
    """Encode an H×W×3 uint8 image with baseline ``key`` at ``quality``: the encoded bytes, the
    decoded H×W×3 uint8 image, and the encoding and decoding times in seconds."""
    b = BASELINES[key]
    img = Image.fromarray(image)
    buf = io.BytesIO()
    start = time.perf_counter()
    img.save(buf, format=b.format, quality=int(quality), **b.options)
    enc = time.perf_counter() - start
    data = buf.getvalue()
    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as rec:
        rec.load()
        out = np.asarray(rec.convert("RGB"), dtype=np.uint8)
    dec = time.perf_counter() - start
    return data, out, enc, dec


def run_baseline(key: str, images: list[tuple[str, np.ndarray]], qualities: tuple[int, ...] = QUALITIES,
                 measure: Callable[[np.ndarray, list[np.ndarray]], list[dict[str, float]]] | None = None,
                 advance: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Per-image records of baseline ``key`` at every quality: ``image``, ``quality``, ``bytes``,
    ``bpp``, the metrics of ``measure(original, decoded images)`` (one batched call per image, every
    quality at once), ``encoding_time``, ``decoding_time``."""
    measure = measure or image_metrics_many
    rows = []
    with ThreadPoolExecutor(max(1, min(len(qualities), torch.get_num_threads()))) as pool:
        for name, image in images:
            pixels = image.shape[0] * image.shape[1]
            coded = list(pool.map(lambda q, image=image: encode_decode(image, key, q), qualities))
            for q, (data, _, enc, dec), metrics in zip(qualities, coded, measure(image, [c[1] for c in coded])):
                rows.append({"image": name, "quality": int(q), "bytes": len(data), "bpp": len(data) * 8 / pixels,
                             **metrics, "encoding_time": enc, "decoding_time": dec})
            if advance is not None:
                advance()
    return rows
