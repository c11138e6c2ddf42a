"""Several trials on one GPU at once (what a sweep with ``resources: {gpus: 0.25}`` asks Tune for)
against the same trials one at a time: trials per hour both ways. Prints JSON.

Each trial is its own process, as a Tune worker is, running the training loop every trial runs
(``Trainer``: here bf16 autocast, fused Adam; with ``--cuda-graph`` each step replayed as one CUDA
graph) for ``--steps`` steps on random patches, from
interpreter start to its last step, so start-up (import, CUDA context) counts as it does in a
sweep. Ray itself is not involved: this measures how well concurrent trials share the device.

    python benchmarks/gpu_packing.py [--trials 4] [--steps 200] [--width 1.0] [--device cuda] [--cuda-graph]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def trial(args: argparse.Namespace) -> None:
    import torch

    from rnncodec.codec.model import CodecConfig, RNNCodec
    from rnncodec.codec.training import TrainConfig, Trainer

    device = torch.device(args.device)
    model = RNNCodec(CodecConfig(width=args.width)).to(device)
    trainer = Trainer(model, TrainConfig(iterations=args.iterations, total_steps=args.steps, amp=True,
                                               cuda_graph=args.cuda_graph))
    pixels = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=device)
    trainer.run(iter(lambda: pixels, None), args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(json.dumps({"train_s": trainer.train_time}))


def run_trials(args: argparse.Namespace, concurrent: int) -> dict:
    command = [sys.executable, __file__, "--trial", *(f"--{k}={v}" for k, v in
               (("steps", args.steps), ("width", args.width), ("batch", args.batch),
                ("iterations", args.iterations), ("device", args.device))),
               *(["--cuda-graph"] if args.cuda_graph else [])]
    start, pending, results = time.perf_counter(), list(range(args.trials)), []
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < concurrent:
            pending.pop()
            running.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a trial process failed with exit status {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1])["train_s"])
    wall = time.perf_counter() - start
    return {"concurrent": concurrent, "wall_s": round(wall, 1), "trials_per_hour": round(args.trials * 3600 / wall, 1),
            "train_s_per_trial": [round(t, 1) for t in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cuda-graph", action="store_true", help="trials replay each step as one CUDA graph")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return trial(args)
    one = run_trials(args, 1)
    packed = run_trials(args, args.trials)
    print(json.dumps({"trials": args.trials, "steps": args.steps, "cuda_graph": args.cuda_graph,
                      "width": args.width, "batch": args.batch,
                      "iterations": args.iterations, "one_at_a_time": one, "packed": packed,
                      "speedup": round(packed["trials_per_hour"] / one["trials_per_hour"], 2)}, indent=2))


if __name__ == "__main__":
    main()
