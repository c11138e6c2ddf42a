"""Overhead of the sweep layer: how much of a sweep's wall time is spent inside training steps.

Runs the same 8 short trials on a local Ray (2 CPUs, 1 CPU per trial) twice, with W&B disabled and
with W&B offline, and prints JSON:

- ``in_training_share``: Σ time inside ``train_step`` / (sweep wall time × concurrent trials), the
  fraction of the machine's trial slots spent training (target ≥ 0.85);
- ``in_training_share_of_trials``: the same over the trials' own wall time (excludes Ray scheduling);
- ``trial_setup_s``: per trial, seconds from entering the trainable to its first step (opening the
  data, building the model, W&B init), and ``slot_overhead_s``: per trial, the rest of the slot time
  that is neither trial time nor training (actor start, Tune bookkeeping);
- ``wandb_offline_cost_s``: extra sweep wall time with W&B offline, and the per-trial time spent in
  W&B calls.

    python benchmarks/sweep_overhead.py [--trials 8] [--epochs 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def sweep(root: Path, name: str, trials: int, epochs: int, steps: int, wandb_mode: str) -> dict:
    from rnncodec.sweeps import runner
    from rnncodec.sweeps.results import collect
    from rnncodec.sweeps.spec import parse_spec

    spec = parse_spec({
        "name": name,
        "data": {"source": "sample", "size": 1024, "cache_dir": str(root / "cache")},
        "fixed": {"epochs": epochs, "steps_per_epoch": steps, "width": 0.125, "iterations": 2,
                  "batch_size": 32, "val_size": 64},
        "axes": {"lr": {"grid": [2e-4 * (k + 1) for k in range(trials)]}},
        "resources": {"cpus": 1}, "concurrency": 2, "storage": str(root / "sweeps"),
        "wandb": {"mode": wandb_mode, "images_every": 1},
    })
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's trial table; stdout carries only the JSON
        summary = runner.run(spec, say=lambda *_: None)
    wall = time.perf_counter() - start
    _, records = collect(summary["location"])
    last = [r["history"][-1] for r in records if r["history"]]
    train = sum(h["train_time"] for h in last)
    trial_wall = sum(h["wall_time"] for h in last)
    slots = 2
    return {
        "wall_s": round(wall, 2),
        "trials": len(last),
        "errors": summary["errors"],
        "in_training_share": round(train / (wall * slots), 4),
        "in_training_share_of_trials": round(train / trial_wall, 4),
        "trial_setup_s": round(sum(h["setup_time"] for h in last) / len(last), 3),
        "slot_overhead_s": round((wall * slots - trial_wall) / len(last), 3),
        "wandb_s_per_trial": round(sum(h["wandb_time"] for h in last) / len(last), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["WANDB_DIR"] = str(root / "wandb")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
        try:
            off = sweep(root, "off", args.trials, args.epochs, args.steps, "disabled")
            offline = sweep(root, "offline", args.trials, args.epochs, args.steps, "offline")
        finally:
            ray.shutdown()
    result = {
        "trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps, "cpus": 2,
        "wandb_disabled": off, "wandb_offline": offline,
        "in_training_share": offline["in_training_share"],
        "per_trial_startup_s": round(offline["trial_setup_s"] + offline["slot_overhead_s"], 3),
        "wandb_offline_cost_s": {"sweep_wall": round(offline["wall_s"] - off["wall_s"], 2),
                                 "in_trial_per_trial": offline["wandb_s_per_trial"]},
        "target_in_training_share": 0.85,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
