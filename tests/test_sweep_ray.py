"""Sweeps on a real local Ray (one session for the module): retries, a killed driver, W&B, reports.

The module starts one Ray with 2 CPUs; the killed-driver test runs its drivers as subprocesses that
join it with ``--address`` (same ``RAY_AUTH_MODE``, inherited), so no second Ray is started and
nothing but processes started here is ever stopped.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from PIL import Image  # noqa: E402

from rnncodec.data import sample_images  # noqa: E402
from rnncodec.data.errors import RnncodecError  # noqa: E402
from rnncodec.sweeps import runner  # noqa: E402
from rnncodec.sweeps.results import best_per_configuration, collect, status_table, write_report  # noqa: E402
from rnncodec.sweeps.spec import parse_spec  # noqa: E402
from rnncodec.sweeps.trainable import private_staging  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("env")
    saved = dict(os.environ)
    os.environ["WANDB_MODE"] = "offline"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[var] = str(home / "wandb")
    os.environ["RNNCODEC_CACHE"] = str(home / "cache")
    # RAY_AUTH_MODE: an explicit setting is respected; unset, ray.init turns token auth on and exports
    # RAY_AUTH_MODE=token to this process's environment, which the driver subprocesses then inherit.
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    assert os.environ.get("RAY_AUTH_MODE") or saved.get("RAY_AUTH_MODE") is None
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def spec_dict(tmp_path, name, **fixed):
    return {
        "name": name,
        "data": {"source": "sample", "size": 128, "cache_dir": str(tmp_path / "cache")},
        "fixed": {"epochs": 3, "steps_per_epoch": 2, "width": 0.125, "val_size": 8, "iterations": 2, **fixed},
        "axes": {"batch_size": [8, 16]},
        "resources": {"cpus": 1},
        "storage": str(tmp_path / "sweeps"),
        "wandb": {"mode": "offline", "images_every": 1, "images": 4},
        "max_failures": 2,
    }


def epochs_of(trial):
    return [h["epoch"] for h in trial["history"]]


def test_failing_trials_are_retried_from_their_checkpoints_and_logged(cluster, tmp_path):
    spec = parse_spec(spec_dict(tmp_path, "flaky"))
    summary = runner.run(spec, fail_after_epoch=1)
    assert summary["errors"] == 0 and summary["trials"] == 2
    location = summary["location"]
    spec, trials = collect(location)
    assert len(trials) == 2
    for t in trials:
        assert t["status"] == "TERMINATED" and t["failures"] == 1
        assert epochs_of(t) == [1, 2, 3]
        assert [h["resumed_from_epoch"] for h in t["history"]] == [-1, 1, 1]
    # one W&B run per trial, and the retried attempt continued the same run id
    runs = sorted((Path(location) / "wandb" / "wandb").glob("offline-run-*"))
    ids = [r.name.split("-", 3)[-1] for r in runs]
    assert len(runs) == 4 and len(set(ids)) == 2 and all(ids.count(i) == 2 for i in ids)
    stored = json.loads((Path(location) / "sweep.json").read_text())
    assert all(i.startswith(stored["context"]["uid"]) for i in ids)
    # checkpoints were staged in the private temporary folder and removed from there, never copied here
    assert not [p for p in Path(location).rglob("*") if "staging" in p.name or p.name.startswith("rnncodec-ckpt-")]
    assert not list(private_staging("x").parent.glob(f"{stored['context']['uid']}-*"))
    # data prepared once, in the sweep's cache, before the trials
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1

    table, _, _ = status_table(location)
    assert table.row_count == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(dict(sample_images())["coffee"][100:292, 200:392]).save(photos / "coffee.png")
    report = write_report(location, images=photos)
    out = Path(report["out"])
    assert report["rows"] == 6
    assert {"results.csv", "summary.md", "curves_by_batch_size.png", "reconstructions.png",
            "rd_psnr.png", "rd_ms-ssim-db.png"} <= {p.name for p in out.iterdir()}
    assert "batch_size 8 vs 16" in (out / "summary.md").read_text()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    Image.fromarray(dict(sample_images())["coffee"][:64, :64]).save(photos / "small.png")
    with pytest.raises(RnncodecError, match=r"small\.png is 64×64; standard 5-scale MS-SSIM needs at least"):
        write_report(location, images=photos)  # refused before any work: the report there stays as it was
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _driver(args, log, cwd=ROOT):
    cmd = [sys.executable, "-m", "rnncodec.sweeps.cli", "sweep", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _progress(location):
    try:
        _, trials = collect(location)
    except Exception:
        return []
    return trials


def test_killed_driver_resumes_without_losing_epochs(cluster, tmp_path):
    raw = spec_dict(tmp_path, "killed", epochs=4, steps_per_epoch=30)
    raw["storage"] = f"file://{tmp_path / 'sweeps'}"  # storage given as a pyarrow URI, as on a cluster
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(raw))
    location = f"{raw['storage']}/killed"
    log = open(tmp_path / "driver.log", "w")
    driver = _driver(["run", str(path), "--address", cluster], log)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            trials = _progress(location)
            if len(trials) == 2 and all(t["epoch"] >= 1 for t in trials):
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoints within 120 s:\n" + (tmp_path / "driver.log").read_text())
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started itself, nothing else
        driver.wait()
    # the driver's trials die with it; wait until their checkpoints stop changing before comparing
    at_kill, settle = None, time.time() + 30
    while time.time() < settle:
        now = {t["trial"]: t["history"] for t in _progress(location)}
        if now == at_kill:
            break
        at_kill = now
        time.sleep(2)
    assert any(len(h) < 4 for h in at_kill.values()), "the trials finished before the kill; lengthen them"
    # as a driver killed while copying it into storage once left it (before copies were atomic)
    (grid_state,) = (tmp_path / "sweeps" / "killed").glob("basic-variant-state-*.json")
    grid_state.write_bytes(grid_state.read_bytes()[:10])

    resumed = _driver(["resume", location, "--address", cluster], log)
    try:
        assert resumed.wait(timeout=240) == 0, (tmp_path / "driver.log").read_text()
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    assert "set aside" in (tmp_path / "driver.log").read_text()
    _, trials = collect(location)
    assert len(trials) == 2
    for t in trials:
        assert t["status"] == "TERMINATED"
        assert epochs_of(t) == [1, 2, 3, 4]  # each configured epoch reported exactly once
        before = at_kill[t["trial"]]
        assert before and t["history"][: len(before)] == before  # kept, not retrained from epoch 0
        assert all(h["resumed_from_epoch"] >= 1 for h in t["history"][len(before):])


def test_resume_continues_errored_trials_from_their_checkpoints(cluster, tmp_path):
    raw = spec_dict(tmp_path, "errored", epochs=2)
    raw["axes"], raw["fixed"]["batch_size"], raw["max_failures"] = {}, 8, 0
    first = runner.run(parse_spec(raw), fail_after_epoch=1)
    assert first["errors"] == 1
    _, (trial,) = collect(first["location"])
    assert trial["status"] == "ERROR" and epochs_of(trial) == [1]
    again = runner.resume(first["location"])
    assert again["errors"] == 0
    _, (trial,) = collect(first["location"])
    assert trial["status"] == "TERMINATED" and epochs_of(trial) == [1, 2]
    assert trial["history"][1]["resumed_from_epoch"] == 1


def test_a_sweep_runs_from_a_folder_of_hostile_modules_and_reports_its_best_checkpoint(cluster, tmp_path):
    """Ray puts the driver's working folder on every worker's sys.path: a user's data.py or codec.py there
    must not shadow rnncodec. The sweep ranks by a metric that is best early (the largest validation
    loss), keeps one checkpoint, and the report must use the best one, not the newest."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("data.py", "codec.py", "sweeps.py"):
        (work / name).write_text('raise ImportError("user file")\n')
    raw = spec_dict(tmp_path, "hostile", epochs=3)
    raw.update(axes={}, metric="val/loss", mode="max", keep_checkpoints=1)
    raw["fixed"]["batch_size"] = 8
    (work / "s.yaml").write_text(yaml.safe_dump(raw))
    with open(tmp_path / "driver.log", "w") as log:
        driver = _driver(["run", "s.yaml", "--address", cluster], log, cwd=work)
        try:
            assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    spec, (trial,) = collect(str(tmp_path / "sweeps" / "hostile"))
    assert trial["status"] == "TERMINATED" and epochs_of(trial) == [1, 2, 3]
    losses = {h["epoch"]: h["val/loss"] for h in trial["history"]}
    best = max(losses, key=losses.get)
    ((_, folder),) = best_per_configuration(spec, [trial]).values()
    assert folder == trial["checkpoints"][best]
    assert best != 3 and folder != trial["checkpoint"]  # Tune kept the best and the newest; the best is used
    report = write_report(str(tmp_path / "sweeps" / "hostile"))
    assert "reconstructions.png" in report["figures"]
    captions = (Path(report["out"]) / "summary.md").read_text().split("## reconstructions.png")[1]
    assert "held-out photograph" in captions and "for reference: the bundled model" in captions
    assert len(re.findall(r"iterations: [\d.]+ bpp, [\d.]+ dB", captions)) == 2  # the trial's and the bundled model's
