"""Speed of ``rnncodec eval`` on the first Kodak images: the default path against the old exact one,
both measured in this run on the same images, and MS-SSIM per call batched against one call per image.

    python benchmarks/eval_speed.py                            # 2 images, 1-16, JPEG and WebP
    python benchmarks/eval_speed.py --images 1 --iterations 1-4  # a quick look

``new``: ``evaluate_checkpoint`` as ``rnncodec eval`` runs it by default (``timing="sample"``: every image
scored from one compress at the largest k and its prefixes; the first ``--timing-images`` images also
decoded once, and timed at every k per iteration of that compress and that decode), and the baselines,
all with batched metrics. ``old``: ``timing="exact"`` on every image and one pytorch-msssim call per point
(the metrics as they were before batching). Seconds per image come from the progress callback, so
the timed sample image and the others are reported apart; ``projected_s`` is a run on
``--project`` images (24: Kodak) from these per-image figures. ``quality`` checks that both paths give
the same figures. ``cpu_kernels``: ``compress_progressive`` of the first image at the largest k,
interleaved ``--repeats`` times, with ``torch.tanh`` or the model's sigmoid-based ``tanh``, and with
blocks above 32 MB mapped afresh (glibc's default at most) or freed blocks kept for reuse
(``codec.allocator``, as ``rnncodec eval`` sets it); best and median seconds. ``codec_floor``: the
FLOPs of the network's forward pass at the largest k on the first image, its best time and this run's
fp32 matmul peak (``train_throughput.matmul_peak``): ``floor_s`` is ``--project`` images' forward passes
at that peak, which no fp32 implementation of the model beats. ``split_times``: the default path's
encode and decode times on the first image at 1, 2, 4, 8, … and the largest k against separate calls,
medians of ``--repeats`` interleaved runs. ``ms_ssim``: one Kodak image against its 19 JPEG reconstructions (qualities 5..95),
median of ``--repeats`` runs, seconds per reconstruction. The load average is recorded before and
after: timings on a shared machine are only as good as its idleness. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import matmul_peak

from rnncodec.codec import compress, compress_progressive, decompress, decompress_progressive, load_checkpoint
from rnncodec.codec.bitstream import prefix_bitstream
from rnncodec.codec import model as model_module
from rnncodec.codec.allocator import reuse_freed_memory
from rnncodec.codec.image import pad_to_stride, to_input
from rnncodec.codec.metrics import ms_ssim, ms_ssim_against, ms_ssim_db, psnr
from rnncodec.evaluation import rd
from rnncodec.evaluation.baselines import QUALITIES, encode_decode, parse_baselines

ROOT = Path(__file__).resolve().parents[1]
QUALITY_KEYS = ("bytes", "bpp", "bpp-payload", "psnr-rgb", "ms-ssim-rgb")


def _planes(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]


def _one_call_per_image(original: np.ndarray, decoded: list[np.ndarray]) -> list[dict[str, float]]:
    """The metrics as ``image_metrics`` computed them before batching: one pytorch-msssim call per image."""
    out = []
    for d in decoded:
        v = 1.0 if np.array_equal(original, d) else min(1.0, float(ms_ssim(_planes(original), _planes(d))[0]))
        out.append({"psnr-rgb": psnr(original, d), "ms-ssim-rgb": v, "ms-ssim-db": ms_ssim_db(v)})
    return out


def _per_image(run: Callable[[Callable[[], None]], Any]) -> tuple[Any, list[float]]:
    """``run(advance)`` and the seconds between successive ``advance`` calls (one per image)."""
    marks = [time.perf_counter()]
    result = run(lambda: marks.append(time.perf_counter()))
    return result, list(np.diff(marks))


def measure(model: Any, images: rd.NamedImages, iterations: str, baselines: list[str], timing: str,
            timing_images: int) -> dict[str, Any]:
    """Seconds per image of the codec and of each baseline, and the codec's result."""
    result, codec_s = _per_image(lambda advance: rd.evaluate_checkpoint(
        model, images, iterations, timing=timing, timing_images=timing_images, advance=advance))
    base_s = [_per_image(lambda advance, key=key: rd.evaluate_baseline(key, images, advance=advance))[1]
              for key in baselines]
    return {"codec_s_per_image": codec_s, "baselines_s_per_image": list(np.sum(base_s, axis=0)) if base_s else [],
            "result": result}


def _same_quality(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    pairs = list(zip(new["per_image"], old["per_image"]))
    return {"bytes_bpp_psnr_identical": all(n[k] == o[k] for n, o in pairs for k in QUALITY_KEYS[:-1]),
            "ms_ssim_max_abs_diff": max(abs(n["ms-ssim-rgb"] - o["ms-ssim-rgb"]) for n, o in pairs)}


def ms_ssim_per_call(image: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per reconstruction: one pytorch-msssim call each against one batched call for all 19."""
    decoded = [encode_decode(image, "jpeg", q)[1] for q in QUALITIES]
    reference, batch = _planes(image), torch.cat([_planes(d) for d in decoded])

    def timed(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) / len(decoded)

    unbatched = timed(lambda: [ms_ssim(reference, b[None]) for b in batch])
    batched = timed(lambda: ms_ssim_against(reference, batch))
    return {"reconstructions": len(decoded), "unbatched_s_per_call": unbatched, "batched_s_per_image": batched,
            "speedup": unbatched / batched}


def cpu_kernels(model: Any, image: np.ndarray, iterations: int, repeats: int) -> dict[str, Any]:
    """Seconds of one progressive compress per tanh kernel and allocator setting, interleaved."""
    fast = model_module.tanh
    variants = {f"{t}_tanh_{a}": (fn, limit) for t, fn in (("torch", torch.tanh), ("model", fast))
                for a, limit in (("fresh_maps", 32 << 20), ("reuse", 1 << 30))}
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(repeats):
            for name, (fn, limit) in variants.items():
                model_module.tanh = fn
                reuse_freed_memory(limit)
                start = time.perf_counter()
                compress_progressive(model, image, iterations)
                times[name].append(time.perf_counter() - start)
    finally:
        model_module.tanh = fast
        reuse_freed_memory()
    out: dict[str, Any] = {k: {"best_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}
    out["speedup_best"] = out["torch_tanh_fresh_maps"]["best_s"] / out["model_tanh_reuse"]["best_s"]
    return out


def split_times(model: Any, image: np.ndarray, counts: list[int], repeats: int) -> dict[str, Any]:
    """Encode and decode seconds at each of ``counts`` as the default eval reports them (split per iteration
    out of one compress and one decompress at the largest count) against separate ``compress`` and
    ``decompress`` calls at each count, interleaved ``repeats`` times; medians and their ratios."""
    top = counts[-1]
    split: dict[str, list[list[float]]] = {"encode": [], "decode": []}
    real: dict[str, list[list[float]]] = {"encode": [], "decode": []}
    for _ in range(repeats):
        enc: list[float] = []
        dec: list[float] = []
        data, _ = compress_progressive(model, image, top, times=enc)
        decompress_progressive(model, data, times=dec)
        split["encode"].append([enc[k - 1] for k in counts])
        split["decode"].append([dec[k - 1] for k in counts])
        real["encode"].append([rd._timed(model, compress, model, image, k)[1] for k in counts])
        real["decode"].append([rd._timed(model, decompress, model, prefix_bitstream(data, k))[1] for k in counts])
    out: dict[str, Any] = {"counts": counts, "repeats": repeats}
    for kind in ("encode", "decode"):
        a, b = np.median(split[kind], axis=0), np.median(real[kind], axis=0)
        out[kind] = {"split_s": list(a), "separate_calls_s": list(b), "ratio": list(a / b)}
    return out


def codec_floor(model: Any, image: np.ndarray, iterations: int, repeats: int, project: int) -> dict[str, Any]:
    """How close the codec's network runs to this CPU's limit: the FLOPs of one forward pass at the
    largest k on the (padded) image, its best time, and the same run's fp32 matmul peak; ``floor_s`` is
    ``project`` images' forward passes at that peak (what no fp32 implementation of this model beats)."""
    x = pad_to_stride(to_input(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]))
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x, iterations)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, iterations)
            best = min(best, time.perf_counter() - start)
    flops = counter.get_total_flops()
    peak = matmul_peak(torch.device("cpu"), 2048) * 1e9
    return {"gflop_per_image": flops / 1e9, "forward_best_s": best, "achieved_gflop_per_s": flops / best / 1e9,
            "matmul_peak_gflop_per_s": peak / 1e9, "share_of_matmul_peak": flops / best / peak,
            "floor_s": project * flops / peak, "forward_s_projected": project * best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak", help="Kodak folder")
    p.add_argument("--images", type=int, default=2, help="number of Kodak images (default: 2)")
    p.add_argument("--iterations", default="1-16", help="iteration counts (default: 1-16)")
    p.add_argument("--baselines", default="jpeg,webp", help="baselines, as rnncodec eval's (default: jpeg,webp)")
    p.add_argument("--timing-images", type=int, default=rd.TIMING_IMAGES,
                   help=f"images the default path times (default: {rd.TIMING_IMAGES})")
    p.add_argument("--project", type=int, default=24, help="images of the projected run (default: 24, Kodak)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the MS-SSIM measurement (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = reuse_freed_memory()  # as rnncodec eval does
    images = rd.load_images(args.kodak, limit=args.images)
    keys = parse_baselines(args.baselines)
    model = load_checkpoint()
    out: dict[str, Any] = {
        "benchmark": "eval_speed", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
        "images": [n for n, _ in images], "iterations": args.iterations, "baselines": keys,
        "timing_images": args.timing_images, "reuse_freed_memory": reused,
    }
    runs = {"new": measure(model, images, args.iterations, keys, "sample", args.timing_images)}
    print(f"new: codec {np.round(runs['new']['codec_s_per_image'], 2)} s per image", file=sys.stderr, flush=True)
    with mock.patch.object(rd, "image_metrics_many", _one_call_per_image):
        runs["old"] = measure(model, images, args.iterations, keys, "exact", 0)
    print(f"old: codec {np.round(runs['old']['codec_s_per_image'], 2)} s per image", file=sys.stderr, flush=True)
    timed = min(args.timing_images, len(images))
    for name, run in runs.items():
        codec, base = run["codec_s_per_image"], run["baselines_s_per_image"]
        row = {"codec_s_per_image": codec, "baselines_s_per_image": base,
               "s_per_image": float(np.mean(codec) + (np.mean(base) if base else 0.0))}
        if name == "new" and timed < len(images):  # the sample image(s) cost an exact run; the others do not
            rest = float(np.mean(codec[timed:]))
            row["untimed_codec_s_per_image"] = rest
            row["projected_s"] = (sum(codec[:timed]) + (args.project - timed) * rest
                                  + args.project * (np.mean(base) if base else 0.0))
        elif name == "old":
            row["projected_s"] = args.project * row["s_per_image"]
        out[name] = row
    out["speedup_per_image"] = out["old"]["s_per_image"] / out["new"]["s_per_image"]
    if "projected_s" in out["new"]:
        out["speedup_projected"] = out["old"]["projected_s"] / out["new"]["projected_s"]
    out["quality"] = _same_quality(runs["new"]["result"], runs["old"]["result"])
    out["ms_ssim"] = ms_ssim_per_call(images[0][1], args.repeats)
    out["cpu_kernels"] = cpu_kernels(model, images[0][1], rd.parse_iterations(args.iterations)[-1], args.repeats)
    ks = rd.parse_iterations(args.iterations)
    out["split_times"] = split_times(model, images[0][1], [k for k in ks if k & (k - 1) == 0 or k == ks[-1]],
                                     args.repeats)
    out["codec_floor"] = codec_floor(model, images[0][1], rd.parse_iterations(args.iterations)[-1], args.repeats,
                                     args.project)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
