"""Entropy coding of the bundled model's codes on Kodak: raw against entropy-coded bpp at 1, 4, 8 and 16
iterations, the saving per iteration, the entropy stage's speed, and the context-model variants tried.

    python benchmarks/entropy.py                      # the 24 Kodak images from ../shared/data/kodak
    python benchmarks/entropy.py --images 4           # a quick look

Each image is compressed once at 16 iterations with raw codes (its codes then drive everything else),
and once entropy-coded; the files for fewer iterations are prefixes of those (exactly the files
``compress`` writes for them). Speeds time the entropy stage alone (``ContextCoder.encode``/``decode``
on the codes), in Mbit of codes per second. Variants are measured by their ideal code length (the sum
of −log2 of the probabilities they give the bits), which the real coder meets within 0.1%. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from rnncodec.codec import bitstream, compress, load_checkpoint
from rnncodec.codec.entropy import ContextCoder
from rnncodec.data.images import list_images, load_image

ROOT = Path(__file__).resolve().parents[1]
POINTS = (1, 4, 8, 16)


class Spatial4(ContextCoder):
    """W, N, NW, NE only."""

    contexts = 16

    def context(self, plane, ys, xs):
        y, x = ys + 2, xs + 2
        ctx = plane[:, y, x - 1].astype(np.int64)
        for dy, dx in ((-1, 0), (-1, -1), (-1, 1)):
            ctx = ctx * 2 + plane[:, y + dy, x + dx]
        return ctx


class Spatial4Previous(Spatial4):
    """W, N, NW, NE and the previous iteration's bit."""

    contexts = 48

    def context(self, plane, ys, xs):
        return super().context(plane, ys, xs) * 3 + (self.previous[:, ys, xs] if self.previous is not None else 2)


class BiasOnly(ContextCoder):
    """One probability per band of iterations: no neighbours."""

    contexts = 1

    def context(self, plane, ys, xs):
        return np.zeros((plane.shape[0], len(ys)), np.int64)


class PerChannel(ContextCoder):
    """The shipped contexts, with separate statistics for each of the 32 channels."""

    contexts = ContextCoder.contexts * 32

    def context(self, plane, ys, xs):
        return super().context(plane, ys, xs) + ContextCoder.contexts * np.arange(plane.shape[0])[:, None]


VARIANTS = {"shipped: W,N,NW,NE,W2,N2 + previous iteration, shared by channels": ContextCoder,
            "W,N,NW,NE + previous iteration": Spatial4Previous, "W,N,NW,NE": Spatial4,
            "bias per band of iterations only": BiasOnly, "shipped contexts, per channel": PerChannel}


def ideal_bits(coder_class: type, codes: np.ndarray) -> np.ndarray:
    """Ideal code length of each iteration under a model (nothing is written)."""
    coder, out = coder_class(*codes.shape[1:]), []
    for plane in codes:
        before = coder.ideal_bits
        coder._code(lambda ys, xs, p, plane=plane: plane[:, ys, xs])
        out.append(coder.ideal_bits - before)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--images", type=int, default=24, help="how many Kodak images (default: all 24)")
    args = parser.parse_args()
    model = load_checkpoint()
    files = list_images(args.kodak)[: args.images]
    raw_bytes, coded_bytes, pixels = np.zeros(len(POINTS)), np.zeros(len(POINTS)), 0
    per_iteration = {name: np.zeros(16) for name in VARIANTS}
    code_bits, encode_s, decode_s = 0, 0.0, 0.0
    start = time.perf_counter()
    for path in files:
        image = load_image(path)
        raw, coded = compress(model, image, 16, entropy_coding=False), compress(model, image, 16)
        pixels += image.shape[0] * image.shape[1]
        for i, k in enumerate(POINTS):
            raw_bytes[i] += len(bitstream.prefix_bitstream(raw, k))
            coded_bytes[i] += len(bitstream.prefix_bitstream(coded, k))
        codes = bitstream.read_codes(raw)
        code_bits += codes.size
        t0 = time.perf_counter()
        encoder = ContextCoder(*codes.shape[1:])
        payloads = [encoder.encode(plane) for plane in codes]
        t1 = time.perf_counter()
        decoder = ContextCoder(*codes.shape[1:])
        assert all(np.array_equal(decoder.decode(p), plane) for p, plane in zip(payloads, codes))
        encode_s, decode_s = encode_s + t1 - t0, decode_s + time.perf_counter() - t1
        for name, variant in VARIANTS.items():
            per_iteration[name] += ideal_bits(variant, codes)
    raw_iteration = code_bits / 16
    result = {
        "benchmark": "entropy", "images": len(files), "model": "bundled lstm-additive-w025",
        "cpu": platform.machine(), "points": [
            {"iterations": k, "raw_bpp": raw_bytes[i] * 8 / pixels, "entropy_bpp": coded_bytes[i] * 8 / pixels,
             "saving_percent": 100 * (1 - coded_bytes[i] / raw_bytes[i])} for i, k in enumerate(POINTS)],
        "entropy_stage": {"encode_mbit_per_s": code_bits / encode_s / 1e6, "decode_mbit_per_s": code_bits / decode_s / 1e6},
        "variants": {name: {
            "ideal_saving_percent_of_codes": {str(k): 100 * (1 - bits[:k].sum() / (raw_iteration * k)) for k in POINTS},
            "saving_percent_per_iteration": [round(100 * (1 - b / raw_iteration), 2) for b in bits]}
            for name, bits in per_iteration.items()},
        "wall_s": time.perf_counter() - start,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
