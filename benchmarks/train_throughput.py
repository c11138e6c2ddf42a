"""Training-step throughput of the codec in patch-iterations per second.

A patch-iteration is one 32×32 patch through one encoder–binarizer–decoder iteration, forward,
backward and optimizer step included. Prints a JSON list of records. Each configuration is
measured as shipped (``optimized``) and against a plain reference step measured in the same run
(``baseline``: the textbook cell that always runs its hidden convolution, contiguous NCHW,
fp32), so the speed-up is read off one machine at one time.

    python benchmarks/train_throughput.py [--steps 3] [--warmup 1] [--widths 1.0 0.25]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from rnncodec.codec.model import CodecConfig, ConvLSTMCell, RNNCodec
from rnncodec.codec.training import train_step


def _plain_lstm_forward(self: ConvLSTMCell, x, state):
    """The textbook ConvLSTM step: zero initial state materialised and convolved."""
    hidden = self.conv_h.in_channels
    if state is None:
        shape = (x.shape[0], hidden, -(-x.shape[2] // self.conv_x.stride[0]), -(-x.shape[3] // self.conv_x.stride[1]))
        state = (x.new_zeros(shape), x.new_zeros(shape))
    h, c = state
    i, f, g, o = (self.conv_x(x) + self.conv_h(h)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


def measure(width: float, batch: int, iterations: int, steps: int, warmup: int, device: torch.device,
            variant: str) -> dict:
    torch.manual_seed(0)
    model = RNNCodec(CodecConfig(cell="lstm", mode="additive", width=width)).to(device)
    amp = False
    if variant == "baseline":
        for m in model.modules():
            if isinstance(m, ConvLSTMCell):
                m.forward = _plain_lstm_forward.__get__(m)
    elif variant == "optimized" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        amp = True
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    pixels = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, pixels, iterations, amp=amp)
    for _ in range(warmup - 1):
        train_step(model, opt, pixels, iterations, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, pixels, iterations, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "config": f"lstm-additive-width{width}",
        "variant": variant,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "amp": amp,
        "batch": batch,
        "iterations": iterations,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": round(seconds, 4),
        "patch_iterations_per_s": round(batch * iterations / seconds, 1),
        "gflop_per_step": round(counter.get_total_flops() / 1e9, 1),
        "achieved_gflop_per_s": round(counter.get_total_flops() / 1e9 / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (at least 1: the first counts FLOPs)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    records = []
    for device in devices:
        for width in args.widths:
            for variant in ("baseline", "optimized"):
                records.append(measure(width, args.batch, args.iterations, args.steps, args.warmup, device, variant))
            base, opt = records[-2:]
            opt["speedup_vs_baseline"] = round(opt["patch_iterations_per_s"] / base["patch_iterations_per_s"], 2)
    print(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
