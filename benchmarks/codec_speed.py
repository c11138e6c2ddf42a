"""Encode and decode time per Kodak image on the CPU at 1, 8 and 16 iterations, for the
paper-size model (width 1.0) and the small one (width 0.25). Untrained weights: the time does
not depend on them. Prints one JSON object.

    python benchmarks/codec_speed.py                     # 2 images, median of 3 runs
    python benchmarks/codec_speed.py --images 1 --repeats 1 --widths 0.25   # quick look

Each time is a real ``compress(model, image, k)`` or ``decompress(model, data)`` call (bits
packed, CRCs, header), after one warm-up call per model; per image the median over the
repeats is taken, then the mean over images is reported. The Kodak images are read from
``../shared/data/kodak`` unless ``--kodak DIR`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from rnncodec.codec import CodecConfig, RNNCodec, compress, decompress  # noqa: E402
from rnncodec.evaluation.rd import load_images, parse_iterations  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak", help="Kodak folder")
    p.add_argument("--images", type=int, default=2, help="number of Kodak images (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median is kept (default: 3)")
    p.add_argument("--iterations", default="1,8,16", help="iteration counts (default: 1,8,16)")
    p.add_argument("--widths", default="1.0,0.25", help="model widths (default: 1.0,0.25)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    out["wall_s"] = time.perf_counter() - start_all
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
