"""The same short sweep on one Ray node and on three nodes of this machine, and the cost of losing one.

Each layout is a fresh ``ray.cluster_utils.Cluster`` with token authentication and 2 CPUs for trials:
one node (a head with 2 CPUs) or three (a head without CPUs, which runs the driver, and two one-CPU
workers). This process is the sweep's driver (``runner.run(address=…)``); storage is a local folder.
A third run adds a spare worker and removes, ungracefully, the node of the first trial to store a
checkpoint while it trains its next epoch. Prints JSON:

- per layout: ``wall_s``; ``start_to_first_step_s``, per trial, from Tune starting it (its actor up)
  to its first training step (data, model, checkpoint lookup); ``slot_overhead_s``, per trial, the
  trial slots' time spent outside training steps ((wall × slots − Σ training time) / trials);
- ``node_failure``, the node killed half an epoch after the trial's checkpoint:
  ``failure_to_resumed_first_step_s`` (node killed → the trial's first step on another node: detection,
  rescheduling, a new worker process, checkpoint restore), ``repeated_work_s`` (training since the last
  checkpoint, done again) and ``time_lost_s``, their sum.

On 2 cores three nodes cannot be faster than one; what matters is that the overheads stay flat.

    python benchmarks/cluster.py [--trials 4] [--epochs 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

SLOTS = 2


def sweep_spec(root: Path, name: str, trials: int, epochs: int, steps: int):
    from rnncodec.sweeps.spec import parse_spec

    return parse_spec({
        "name": name,
        "data": {"source": "sample", "size": 512, "cache_dir": str(root / "cache")},
        "fixed": {"epochs": epochs, "steps_per_epoch": steps, "width": 0.125, "iterations": 2, "val_size": 16},
        "axes": {"batch_size": {"grid": [8 * (k + 1) for k in range(trials)]}},
        "resources": {"cpus": 1}, "concurrency": SLOTS, "storage": str(root / "sweeps"),
        "wandb": {"mode": "disabled"}, "max_failures": 2,
    })


def start_cluster(head_cpus: int, workers: int):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    nodes = {}
    for _ in range(workers):
        node = cluster.add_node(num_cpus=1)
        nodes[node.node_id] = node
    cluster.wait_for_nodes()
    return cluster, nodes


def run_sweep(cluster, spec, during=None) -> tuple[dict, list[dict]]:
    """Run ``spec`` with this process as the driver (``during()`` in a thread meanwhile); its summary and trials."""
    import ray

    from rnncodec.sweeps import runner
    from rnncodec.sweeps.results import collect

    helper = threading.Thread(target=during, daemon=True) if during else None
    if helper:
        helper.start()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Tune's trial table; stdout carries only the JSON
            summary = runner.run(spec, address=cluster.address, say=lambda *_: None)
    finally:
        ray.shutdown()
    if helper:
        helper.join(60)
    return summary, collect(summary["location"])[1]


def layout(root: Path, name: str, head_cpus: int, workers: int, args) -> dict:
    cluster, _ = start_cluster(head_cpus, workers)
    try:
        summary, trials = run_sweep(cluster, sweep_spec(root, name, args.trials, args.epochs, args.steps))
    finally:
        cluster.shutdown()
    last = [t["history"][-1] for t in trials]
    return {
        "nodes": 1 + workers, "wall_s": round(summary["seconds"], 2), "trials": len(trials),
        "finished": summary["finished"], "nodes_used": len({h["node_id"] for t in trials for h in t["history"]}),
        "start_to_first_step_s": round(statistics.mean(t["history"][0]["first_step_at"] - t["started"]
                                                       for t in trials), 3),
        "slot_overhead_s": round((summary["seconds"] * SLOTS - sum(h["train_time"] for h in last)) / len(trials), 3),
    }


def node_failure(root: Path, args) -> dict:
    """Three one-CPU workers, two trial slots: kill the node of the first trial to store a checkpoint."""
    from rnncodec.sweeps.results import collect

    cluster, nodes = start_cluster(0, 3)
    spec = sweep_spec(root, "failure", SLOTS, args.epochs, args.steps)
    location = str(root / "sweeps" / "failure")
    lost: dict = {}

    def kill_one() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                running = [t for t in collect(location)[1] if t["status"] == "RUNNING" and t["history"]]
            except Exception:  # noqa: BLE001 - the sweep folder is not written yet
                running = []
            if running:
                trial, last = running[0]["trial"], running[0]["history"][-1]
                time.sleep(max(0.0, last["epoch_end_at"] + last["epoch_time"] / 2 - time.time()))  # mid-epoch
                cluster.remove_node(nodes[last["node_id"]], allow_graceful=False)
                lost.update(trial=trial, node=last["node_id"], at=time.time(), checkpoint_end=last["epoch_end_at"],
                            epoch=last["epoch"])
                return
            time.sleep(0.2)

    try:
        summary, trials = run_sweep(cluster, spec, during=kill_one)
    finally:
        cluster.shutdown()
    (hit,) = [t for t in trials if t["trial"] == lost["trial"]]
    resumed = [h for h in hit["history"] if h["node_id"] != lost["node"]]
    return {
        "wall_s": round(summary["seconds"], 2), "finished": summary["finished"], "failures": hit["failures"],
        "resumed_from_epoch": resumed[0]["resumed_from_epoch"], "lost_after_epoch": lost["epoch"],
        "failure_to_resumed_first_step_s": round(resumed[0]["first_step_at"] - lost["at"], 2),
        "repeated_work_s": round(lost["at"] - lost["checkpoint_end"], 2),
        "time_lost_s": round(resumed[0]["first_step_at"] - lost["checkpoint_end"], 2),
        "epoch_s": round(statistics.mean(h["epoch_time"] for h in hit["history"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "token").write_text(secrets.token_hex(32))
        # before Ray is imported, which reads them once: token auth on, with a token of this run only
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"), RAY_DEDUP_LOGS="1",
                          WANDB_MODE="disabled")
        one = layout(root, "one-node", 2, 0, args)
        three = layout(root, "three-nodes", 0, 2, args)
        failure = node_failure(root, args)
    result = {
        "trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps, "trial_slots": SLOTS,
        "cpus": os.cpu_count(), "one_node": one, "three_nodes": three, "node_failure": failure,
        "start_to_first_step_ratio_3_vs_1": round(three["start_to_first_step_s"] / one["start_to_first_step_s"], 2),
        "slot_overhead_ratio_3_vs_1": round(three["slot_overhead_s"] / one["slot_overhead_s"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
