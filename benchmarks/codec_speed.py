"""Encode and decode time per Kodak image on the CPU at 1, 8 and 16 iterations, for the
paper-size model (width 1.0) and the small one (width 0.25); the decoder's peak memory on a
large image; and decode time with 16-pixel tiles against the default 1024-pixel ones.
Untrained weights: neither time nor memory depends on them. Prints one JSON object.

    python benchmarks/codec_speed.py            # 2 images, median of 3 runs, 4096×4096 memory image
    python benchmarks/codec_speed.py --quick    # 1 image, 1 run, width 0.25, 2048×2048: about 2 minutes

Each time is a real ``compress(model, image, k)`` or ``decompress(model, data)`` call (bits
packed, CRCs, header), after one warm-up call per model; per image the median over the
repeats is taken, then the mean over images is reported. The Kodak images are read from
``../shared/data/kodak`` unless ``--kodak DIR`` says otherwise.

Memory (``decode_memory``): a synthetic ``--memory-side``² image is compressed at 16 iterations
with an untrained width-0.125 model, then each decoder runs in a fresh Python process that
reports its resident memory just before the call (model built, file read: the baseline) and its
peak (VmHWM of /proc/self/status). ``decompress`` adds the output image and one tile batch's
working memory, whatever the image size and iteration count; ``decompress_progressive``, which
also keeps every iteration's image, is the reference.

Tiles (``tile_decode``): one synthetic 256×256 image at 16 iterations with the width-0.125 model,
written with ``tile=16`` (256 tiles) and with the default tile; median decode time of each, and of
the 16-pixel file decoded one tile per model call (the batch bound patched down to one tile), as
the decoder did before tiles were batched.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from rnncodec.codec import (
    CodecConfig,
    RNNCodec,
    bitstream,
    compress,
    decompress,
    decompress_progressive,
)
from rnncodec.codec.bitstream import read_bitstream
from rnncodec.data.files import write_atomic
from rnncodec.evaluation.rd import load_images, parse_iterations

SMALL_WIDTH = 0.125  # the model of the memory and tile measurements
DECODERS = {"decompress": decompress, "decompress_progressive": decompress_progressive}


def _small_model() -> RNNCodec:
    torch.manual_seed(0)  # the child process rebuilds the same weights, so the model id matches
    return RNNCodec(CodecConfig(width=SMALL_WIDTH)).eval()


def _synthetic(side: int) -> np.ndarray:
    """A smooth colour ramp with noise, side×side×3 uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = np.stack([(yy * 3 + xx) % 256, (xx * 2) % 256, 255 - yy % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 20, (side, side, 3)), 0, 255).astype(np.uint8)


def _rss_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(path: str, decoder: str) -> int:
    """In a fresh process: decode ``path`` once and print its memory as JSON."""
    model = _small_model()
    data = read_bitstream(path)
    before = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    images = DECODERS[decoder](model, data)
    seconds = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: after exec, ru_maxrss also counts the parent's peak (Linux keeps the
    # larger of the two), which would hide the decoder's own.
    peak = _rss_mb("VmHWM")
    returned = sum(a.nbytes for a in (images if isinstance(images, list) else [images]))
    print(json.dumps({"decoder": decoder, "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
                      "added_mb": round(peak - before, 1), "returned_mb": round(returned / 2**20, 1),
                      "decode_s": round(seconds, 2)}))
    return 0


def decode_memory(side: int, threads: int | None) -> dict:
    """Peak resident memory of each decoder on a side×side, 16-iteration file, each in a fresh process."""
    model = _small_model()
    image = _synthetic(side)
    t0 = time.perf_counter()
    data = compress(model, image, 16)
    encode_s = time.perf_counter() - t0
    del image
    out = {"image_size": [side, side], "iterations": 16, "width": SMALL_WIDTH, "file_bytes": len(data),
           "encode_s": round(encode_s, 2), "output_image_mb": round(side * side * 3 / 2**20, 1), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        path = write_atomic(Path(folder) / "big.rnnc", data)
        for decoder in DECODERS:
            command = [sys.executable, __file__, "--child", str(path), decoder]
            if threads:
                command += ["--threads", str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            out["runs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"decode memory {side}²: {out['runs'][-1]}", file=sys.stderr, flush=True)
    return out


def tile_decode(repeats: int) -> dict:
    """Median decode time of a 256×256, 16-iteration file written with 16-pixel tiles and with the default."""
    model = _small_model()
    image = _synthetic(256)
    out = {"image_size": [256, 256], "iterations": 16, "width": SMALL_WIDTH}
    files = {tile: compress(model, image, 16, tile=tile) for tile in (16, 1024)}
    for name, tile, batch_side in [("tile_1024", 1024, bitstream.DEFAULT_TILE),
                                     ("tile_16", 16, bitstream.DEFAULT_TILE),
                                     ("tile_16_one_per_call", 16, 16)]:  # as before batching
        with mock.patch.object(bitstream, "DEFAULT_TILE", batch_side):
            decompress(model, files[tile])  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                decompress(model, files[tile])
                times.append(time.perf_counter() - t0)
        out[f"{name}_decode_s"] = statistics.median(times)
    out["ratio_16_to_1024"] = out["tile_16_decode_s"] / out["tile_1024_decode_s"]
    out["batching_speedup_16"] = out["tile_16_one_per_call_decode_s"] / out["tile_16_decode_s"]
    print(f"tile decode: {out}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak", help="Kodak folder")
    p.add_argument("--images", type=int, default=2, help="number of Kodak images (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median is kept (default: 3)")
    p.add_argument("--iterations", default="1,8,16", help="iteration counts (default: 1,8,16)")
    p.add_argument("--widths", default="1.0,0.25", help="model widths (default: 1.0,0.25)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--memory-side", type=int, default=None,
                   help="side of the decode-memory image (default: 4096, or 2048 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="1 image, 1 run, width 0.25, iterations 1,16, a 2048² memory image: a few minutes on 2 cores")
    p.add_argument("--child", nargs=2, metavar=("FILE", "DECODER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return _child(*args.child)
    if args.quick:
        args.images, args.repeats, args.widths, args.iterations = 1, 1, "0.25", "1,16"
    memory_side = args.memory_side or (2048 if args.quick else 4096)
    ks = parse_iterations(args.iterations)
    images = load_images(args.kodak, limit=args.images)
    out = {
        "benchmark": "codec_speed", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "images": [n for n, _ in images], "image_size": list(images[0][1].shape[:2]),
        "statistic": "mean over images of the per-image median, seconds", "results": [],
    }
    start_all = time.perf_counter()
    for width in (float(w) for w in args.widths.split(",")):
        torch.manual_seed(0)
        model = RNNCodec(CodecConfig(width=width)).eval()
        params = sum(t.numel() for t in model.parameters())
        compress(model, images[0][1][:64, :64], 2)  # warm-up (model id hash, allocator)
        for k in ks:
            enc, dec, size = [], [], []
            for _, image in images:
                e, d = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    data = compress(model, image, k)
                    e.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    decompress(model, data)
                    d.append(time.perf_counter() - t0)
                enc.append(statistics.median(e))
                dec.append(statistics.median(d))
                size.append(len(data) * 8 / (image.shape[0] * image.shape[1]))
            row = {"width": width, "parameters": params, "iterations": k, "bpp": statistics.mean(size),
                   "encode_s": statistics.mean(enc), "decode_s": statistics.mean(dec),
                   "encode_s_per_image": enc, "decode_s_per_image": dec}
            out["results"].append(row)
            print(f"width {width:g} k={k}: encode {row['encode_s']:.2f} s, decode {row['decode_s']:.2f} s",
                  file=sys.stderr, flush=True)
    out["tile_decode"] = tile_decode(max(args.repeats, 3))
    out["decode_memory"] = decode_memory(memory_side, args.threads)
    out["wall_s"] = time.perf_counter() - start_all
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
