"""Training-step throughput in patch-iterations per second, ours against the peer port's step.

A patch-iteration is one 32×32 patch through one encoder–binarizer–decoder iteration, forward,
backward and optimizer step included. Every variant is measured in the same run, interleaved
(``--rounds``), against the step of the most used PyTorch port (``peer``: 1zb/pytorch-image-comp-rnn's
network and training step, ``peer_1zb.py``), so ratios are read off one machine at one time. The
fp32 matrix-multiply peak of the device (a square ``--peak-size`` matmul) is measured in the same
run too, and each variant's share of it reported (FLOPs counted by torch's FlopCounterMode).

On the CPU each measurement runs in a fresh process, as each program trains by itself: in one process
a variant inherited the glibc heap that the variants before it had grown, which changed its rate (the
port's step ran at 43–48 patch-iterations/s in fresh processes, and in one process at 44 first and 49
once ours had run).
``--reuse-freed-memory`` measures every variant with freed blocks kept for reuse
(``codec.allocator``, as ``rnncodec eval`` runs), which neither training program sets by itself.

Variants: ``peer``; ``ours`` (as ``rnncodec train`` runs it: fp32); ``ours-bf16`` (bfloat16
autocast, ``--amp``; fp32 where the CPU has no native bf16: see ``amp``); on CUDA also ``ours-bf16-cl`` (plus channels_last), ``ours-compiled`` (plus
``torch.compile`` of the network), ``ours-cudagraphs`` (the network compiled with
``mode="reduce-overhead"``: CUDA graphs of the forward and backward), and ``ours-graphed`` and
``ours-bf16-graphed`` (``--cuda-graph``: the whole step, optimizer included, replayed as one CUDA
graph). The defaults are the paper's size: width 1.0, batch 32, 4 iterations. On CUDA the share of
peak is read against the TF32 matmul peak for fp32 variants (cuDNN convolves fp32 in TF32 by
default) and the bf16 peak for bf16 ones.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--widths 1.0 0.25] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from peer_1zb import LR, PeerCodec, peer_step  # noqa: E402

from rnncodec.codec.allocator import reuse_freed_memory  # noqa: E402
from rnncodec.codec.model import CodecConfig, RNNCodec  # noqa: E402
from rnncodec.codec.training import TrainConfig, Trainer  # noqa: E402

CPU_VARIANTS = ("peer", "ours", "ours-bf16")
CUDA_VARIANTS = ("peer", "ours", "ours-graphed", "ours-bf16", "ours-bf16-cl", "ours-bf16-graphed", "ours-compiled",
                 "ours-cudagraphs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int, kind: str = "fp32", repeats: int = 5) -> float:
    """GFLOP/s of a ``size``³ matrix product, best of ``repeats``: ``kind`` fp32 (TF32 off), tf32 or bf16."""
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        a @ b
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * size**3 / best / 1e9


def make_step(variant: str, width: float, iterations: int, device: torch.device):
    """The model, a callable taking one training step on a batch, and whether bf16 autocast is on."""
    torch.manual_seed(0)
    if variant == "peer":
        model = PeerCodec(width).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        return model, lambda pixels: peer_step(model, opt, pixels, iterations), False
    model = RNNCodec(CodecConfig(width=width)).to(device)
    if variant in ("ours-bf16-cl", "ours-bf16-graphed", "ours-compiled", "ours-cudagraphs"):
        model = model.to(memory_format=torch.channels_last)
    if variant == "ours-compiled":
        model.forward = torch.compile(model.forward)
    if variant == "ours-cudagraphs":  # compiled and replayed as CUDA graphs: fewer kernel launches
        model.forward = torch.compile(model.forward, mode="reduce-overhead")
    trainer = Trainer(model, TrainConfig(iterations=iterations, lr=LR, lr_schedule="none",
                                         amp=variant not in ("ours", "ours-graphed"),
                                         cuda_graph=variant.endswith("-graphed")))
    return model, lambda pixels: trainer.run(iter((pixels,)), 1), trainer.amp


def measure(variant: str, width: float, batch: int, iterations: int, steps: int, warmup: int,
            device: torch.device) -> dict:
    gc.collect()  # the variants before this one must not count in its memory
    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model, step, amp = make_step(variant, width, iterations, device)
    pixels = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    start = time.perf_counter()
    step(pixels)  # first step: lazy initialisation, compilation
    _sync(device)
    first = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        step(pixels)
    for _ in range(warmup):
        step(pixels)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(pixels)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"variant": variant, "width": width, "bf16_autocast": amp, "batch": batch, "iterations": iterations,
            "params": sum(p.numel() for p in model.parameters()),
            "first_step_s": round(first, 2), "seconds_per_step": round(seconds, 4),
            "patch_iterations_per_s": round(batch * iterations / seconds, 1),
            "gflop_per_step": round(counter.get_total_flops() / 1e9, 1),
            "achieved_gflop_per_s": round(counter.get_total_flops() / 1e9 / seconds, 1),
            **({"peak_memory_mib": round((torch.cuda.max_memory_allocated(device) - held) / 2**20)}
               if device.type == "cuda" else {})}


def measure_isolated(variant: str, width: float, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh Python process with this run's settings."""
    command = [sys.executable, __file__, "--one", variant, "--widths", str(width), "--device", args.device,
               "--batch", str(args.batch), "--iterations", str(args.iterations), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(torch.get_num_threads())]
    if args.reuse_freed_memory:
        command.append("--reuse-freed-memory")
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        return {"variant": variant, "width": width, "error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (the median counts)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every variant")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0])
    parser.add_argument("--variants", nargs="+", choices=CUDA_VARIANTS,
                        help="default: peer ours ours-bf16 (CPU); all eight (CUDA)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="keep freed blocks for reuse in every variant (glibc; default: as each program runs)")
    parser.add_argument("--one", metavar="VARIANT", help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reuse_freed_memory:
        reuse_freed_memory()
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure(args.one, args.widths[0], args.batch, args.iterations, args.steps, args.warmup,
                                 device)))
        return
    variants = args.variants or (CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    peak = matmul_peak(device, args.peak_size)
    peaks = ({"tf32": matmul_peak(device, args.peak_size, "tf32"), "bf16": matmul_peak(device, args.peak_size, "bf16")}
             if device.type == "cuda" else {})
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    records = []
    for width in args.widths:
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                try:
                    runs[v].append(measure_isolated(v, width, args) if device.type == "cpu" else
                                   measure(v, width, args.batch, args.iterations, args.steps, args.warmup, device))
                except Exception as e:  # a variant this device cannot run is reported, not fatal
                    runs[v].append({"variant": v, "width": width, "error": f"{type(e).__name__}: {e}"[:300]})
        base = statistics.median(r["patch_iterations_per_s"] for r in runs["peer"]) if "peer" in runs else None
        for v, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                records.append(rs[0])
                continue
            best = max(ok, key=lambda r: r["patch_iterations_per_s"])
            against = peaks.get("bf16" if best["bf16_autocast"] else "tf32", peak)
            rec = {**best, "patch_iterations_per_s_rounds": [r["patch_iterations_per_s"] for r in ok],
                   "share_of_matmul_peak": round(best["achieved_gflop_per_s"] / against, 3)}
            if base:
                rec["speedup_vs_peer"] = round(statistics.median(rec["patch_iterations_per_s_rounds"]) / base, 2)
            records.append(rec)
    print(json.dumps({"device": name, "fp32_matmul_peak_gflop_per_s": round(peak, 1),
                      **{f"{k}_matmul_peak_gflop_per_s": round(v, 1) for k, v in peaks.items()},
                      "peak_matmul_size": args.peak_size,
                      "allocator": "freed memory kept for reuse" if args.reuse_freed_memory else "glibc default",
                      "records": records}, indent=2))


if __name__ == "__main__":
    main()
