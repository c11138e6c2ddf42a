"""One trial without Ray: exact resume, unreadable checkpoints, W&B offline runs."""

import json
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rnncodec import data
from rnncodec.sweeps import trainable
from rnncodec.sweeps.spec import SweepError, parse_spec, trial_key
from rnncodec.sweeps.storage import checkpoints
from rnncodec.sweeps.trainable import InjectedFailure, private_staging, quality_metrics, run_trial

LOCAL = pafs.LocalFileSystem()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as a 1-CPU trial has (and lean on a shared 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return str(data.prepare("sample", out=tmp_path_factory.mktemp("data") / "d", size=128))


@pytest.fixture
def params():
    spec = parse_spec({"name": "t", "data": {"source": "sample"},
                       "fixed": {"epochs": 3, "steps_per_epoch": 2, "width": 0.125, "batch_size": 8,
                                 "val_size": 8, "iterations": 2, "lr_schedule": "cosine"}})
    return spec.fixed


class Folder:
    """Keeps reported checkpoints as ``checkpoint_NNNNNN`` folders, the way Tune stores them."""

    def __init__(self, path: Path):
        self.path, self.metrics = path, []
        path.mkdir(parents=True, exist_ok=True)

    def report(self, metrics, folder):
        shutil.copytree(folder, self.path / f"checkpoint_{len(list(self.path.glob('checkpoint_*'))):06d}")
        self.metrics.append(metrics)

    def run(self, params, **kw):
        return run_trial(params, 0, data_location=kw.pop("data"), report=self.report,
                         places=[(LOCAL, str(self.path))], **kw)


NUMBERS = ("val/psnr", "val/ms_ssim", "val/loss", "train/psnr", "train/step_loss", "samples_seen", "steps", "lr")


def test_resume_after_a_failure_continues_exactly(tmp_path, prepared, params):
    straight = Folder(tmp_path / "straight")
    straight.run(params, data=prepared)
    assert [m["epoch"] for m in straight.metrics] == [1, 2, 3]

    broken = Folder(tmp_path / "broken")
    with pytest.raises(InjectedFailure):
        broken.run(params, data=prepared, fail_after_epoch=1)
    assert [m["epoch"] for m in broken.metrics] == [1]
    broken.run(params, data=prepared, fail_after_epoch=1)  # the retry starts from the epoch-1 checkpoint and does not fail again
    assert [m["epoch"] for m in broken.metrics] == [1, 2, 3]
    assert [m["resumed_from_epoch"] for m in broken.metrics] == [-1, 1, 1]
    for a, b in zip(straight.metrics, broken.metrics):
        assert {k: a[k] for k in NUMBERS} == {k: b[k] for k in NUMBERS}
    assert checkpoints(LOCAL, str(broken.path))[0][0] == 3


def test_checkpoints_are_staged_in_the_given_folder_and_a_killed_attempts_leftovers_removed(
        tmp_path, prepared, params):
    staging = tmp_path / "staging"
    left = staging / "rnncodec-ckpt-killed"  # as a SIGKILLed attempt leaves it, between staging and report
    left.mkdir(parents=True)
    (left / "state.pt").write_bytes(b"half")
    staged = []
    folder = Folder(tmp_path / "trial")

    def report(metrics, path):
        staged.append(Path(path).parent)
        folder.report(metrics, path)

    run_trial(params, 0, data_location=prepared, report=report, staging=staging)
    assert staged == [staging] * 3
    assert list(staging.iterdir()) == []


def test_private_staging_is_this_users_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = private_staging("sweep-trial")
    root = folder.parent
    assert folder.name == "sweep-trial" and root.parent == tmp_path and stat.S_IMODE(root.stat().st_mode) == 0o700
    root.chmod(0o755)
    with pytest.raises(SweepError, match="only this user can open"):
        private_staging("sweep-trial")
    root.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    root.symlink_to(elsewhere)
    with pytest.raises(SweepError, match="remove it"):
        private_staging("sweep-trial")
    root.unlink()
    root.write_text("a file")
    with pytest.raises(SweepError, match="cannot make the folder"):
        private_staging("sweep-trial")


def test_probes_validate_between_epochs_without_changing_training(tmp_path, prepared, params, monkeypatch):
    monkeypatch.setattr(trainable, "trial_seed", lambda params, repeat: 1234)  # else the seed differs with val_probes
    plain = Folder(tmp_path / "plain")
    plain.run({**params, "steps_per_epoch": 6}, data=prepared)
    probed = Folder(tmp_path / "probed")
    with pytest.raises(InjectedFailure):
        probed.run({**params, "steps_per_epoch": 6, "val_probes": 2}, data=prepared, fail_after_epoch=1)
    probed.run({**params, "steps_per_epoch": 6, "val_probes": 2}, data=prepared, fail_after_epoch=1)
    for a, b in zip(plain.metrics, probed.metrics):
        assert {k: a[k] for k in NUMBERS} == {k: b[k] for k in NUMBERS}
    history = checkpoints(LOCAL, str(probed.path))[0][2]["history"]
    # steps 8, 11 and 16 (two per doubling from 8) fall inside epochs 2 and 3 of 6 steps each
    assert [[p["steps"] for p in h.get("probes", [])] for h in history] == [[], [8, 11], [16]]
    assert all(0 < p["val/ms_ssim"] <= 1 and p["samples_seen"] == 8 * p["steps"] for h in history for p in h.get("probes", []))
    assert all("probes" not in m for m in probed.metrics)  # Tune and W&B get the epoch's numbers only


def test_unreadable_checkpoint_falls_back_to_the_previous_then_restarts(tmp_path, prepared, params):
    trial = Folder(tmp_path / "trial")
    short = {**params, "epochs": 2}
    trial.run(short, data=prepared)
    newest = checkpoints(LOCAL, str(trial.path))
    assert [e for e, _, _, _ in newest] == [2, 1]
    (Path(newest[0][1]) / "state.pt").write_bytes(b"not a checkpoint")
    warnings = []
    trial.run(short, data=prepared, warn=warnings.append)
    assert len(warnings) == 1 and "is unreadable" in warnings[0] and "trying the older" in warnings[0]
    # epoch 2 was trained again from the epoch-1 checkpoint
    assert [m["epoch"] for m in trial.metrics[2:]] == [2]
    assert trial.metrics[2]["resumed_from_epoch"] == 1
    assert trial.metrics[2]["val/psnr"] == trial.metrics[1]["val/psnr"]  # same numbers as the first time

    for _, folder, _, _ in checkpoints(LOCAL, str(trial.path)):
        (Path(folder) / "state.pt").write_bytes(b"")
    warnings.clear()
    trial.metrics.clear()
    trial.run(short, data=prepared, warn=warnings.append)
    assert "restarting the trial from epoch 0" in warnings[-1]
    assert [m["epoch"] for m in trial.metrics] == [1, 2]


def test_a_diverging_trial_stops_once_that_epoch_is_stored_and_a_resume_trains_no_further(tmp_path, prepared, params):
    trial = Folder(tmp_path / "trial")
    blowup = {**params, "lr": 1e30}  # far above what a sweep file may ask for: the loss is NaN by the second step
    warnings = []
    last = trial.run(blowup, data=prepared, warn=warnings.append)
    assert [(m["epoch"], m["diverged"]) for m in trial.metrics] == [(1, True)]  # not epochs 2 and 3 of NaN weights
    assert last["diverged"] and len(warnings) == 1 and "diverged in epoch 1" in warnings[0] and "lower lr" in warnings[0]
    assert [e for e, _, _, _ in checkpoints(LOCAL, str(trial.path))] == [1]  # stored: the report names it
    again = trial.run(blowup, data=prepared, warn=warnings.append)  # a retry or resume of that trial
    assert len(trial.metrics) == 1 and again["epoch"] == 1 and again["diverged"]
    healthy = Folder(tmp_path / "healthy")
    healthy.run({**params, "epochs": 1}, data=prepared)
    assert healthy.metrics[0]["diverged"] is False


def test_checkpoint_of_another_trial_is_not_used(tmp_path, prepared, params):
    trial = Folder(tmp_path / "trial")
    trial.run({**params, "epochs": 1}, data=prepared)
    warnings = []
    trial.run({**params, "epochs": 1, "lr": 1e-3}, data=prepared, warn=warnings.append)
    assert "belongs to another trial" in warnings[0]
    assert trial.metrics[-1]["resumed_from_epoch"] == -1


def test_wandb_offline_run_keeps_its_id_across_resume(tmp_path, prepared, params, wandb_offline):
    settings = {**wandb_offline, "images_every": 1}
    trial = Folder(tmp_path / "trial")
    short = {**params, "epochs": 2}
    run_id = f"abcd-{trial_key(short, 0)}"
    with pytest.raises(InjectedFailure):
        trial.run(short, data=prepared, wandb_settings=settings, run_id=run_id, fail_after_epoch=1)
    trial.run(short, data=prepared, wandb_settings=settings, run_id=run_id)
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    # W&B names the folders offline-run-<time>-<id>, adding "-1" when both start in the same second
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)
    assert all((r / f"run-{run_id}.wandb").stat().st_size > 0 for r in runs)


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline W&B run file (its LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, bodies, pending = path.read_bytes(), 7, [], b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        body, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            bodies.append(pending + body)
            pending = b""
        elif kind in (2, 3):
            pending += body
        elif kind == 0:
            pos += room - 7 - length
    rows = []
    for body in bodies:
        record = pb.Record()
        record.ParseFromString(body)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({"step": record.history.step.num, **items})
    return rows


def test_wandb_gets_the_probed_curve_as_a_table_after_the_last_epoch(tmp_path, prepared, params, wandb_offline):
    trial = Folder(tmp_path / "trial")
    trial.run({**params, "steps_per_epoch": 6, "val_probes": 2}, data=prepared, wandb_settings=wandb_offline,
              run_id="probed")
    [run] = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    rows = wandb_history(run / "run-probed.wandb")
    tables = [r for r in rows if "val/by_steps/nrows" in r]
    assert len(tables) == 1 and tables[0]["step"] == rows[-1]["step"]
    assert tables[0]["val/by_steps/nrows"] == 6  # epoch ends at 6, 12, 18 and probes at 8, 11, 16


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    return {"mode": "offline", "project": "rnncodec-test", "entity": None, "group": "g", "images_every": 0,
            "images": 4, "dir": str(tmp_path / "wb")}


def _attempts(folder: Path) -> list[list[dict]]:
    """History rows of each offline run under ``folder``, in the order the runs were made."""
    runs = [wandb_history(p) for p in folder.glob("wandb/offline-run-*/run-*.wandb")]
    return sorted((r for r in runs if r), key=lambda rows: rows[0]["_timestamp"])


def test_wandb_continues_the_curve_after_falling_back_to_an_older_checkpoint(tmp_path, prepared, params,
                                                                              wandb_offline):
    trial = Folder(tmp_path / "trial")
    run_id = f"abcd-{trial_key(params, 0)}"
    trial.run(params, data=prepared, wandb_settings=wandb_offline, run_id=run_id)
    newest = checkpoints(LOCAL, str(trial.path))[0][1]
    for name in ("state.pt", "meta.json"):
        (Path(newest) / name).write_bytes(b"damaged")  # epoch 3's checkpoint is lost, meta and all
    trial.run(params, data=prepared, wandb_settings=wandb_offline, run_id=run_id, warn=lambda _: None)
    first, second = _attempts(Path(wandb_offline["dir"]))
    assert [(r["step"], r["epoch"]) for r in first] == [(1, 1), (2, 2), (3, 3)]
    # W&B keeps a row only if its step exceeds every step it already holds for the run
    kept, top = [], 0
    for row in first + second:
        if row["step"] > top:
            kept.append(row)
            top = row["step"]
    assert [r["epoch"] for r in kept] == [1, 2, 3, 3]  # the epoch trained again reaches the dashboard
    assert kept[-1]["val/psnr"] == trial.metrics[-1]["val/psnr"] and kept[-1]["resumed_from_epoch"] == 2


def test_wandb_gets_an_epoch_only_after_its_checkpoint_is_stored(tmp_path, prepared, params, wandb_offline):
    def report(metrics, folder):
        if metrics["epoch"] == 2:
            raise OSError("storage went away")

    with pytest.raises(OSError):
        run_trial(params, 0, data_location=prepared, report=report, wandb_settings=wandb_offline, run_id="abcd-x")
    (rows,) = _attempts(Path(wandb_offline["dir"]))
    assert [r["epoch"] for r in rows] == [1]


def test_every_iteration_is_reported_even_the_first_of_one():
    q = {"psnr": [20.0], "ms_ssim": [0.5], "residual": [0.1]}
    assert {"val/psnr_i1", "val/ms_ssim_i1", "val/residual_i1", "val/psnr"} <= set(quality_metrics("val", q))
    assert "val/psnr_i2" in quality_metrics("val", {k: v * 2 for k, v in q.items()})


def test_wandb_trouble_never_stops_a_trial(tmp_path, monkeypatch, capsys):
    from rnncodec.sweeps.wandb_logging import TrialLogger, logged_in

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    assert not logged_in()
    logger = TrialLogger({"mode": "online", "dir": str(tmp_path / "wb"), "project": "p", "entity": None,
                          "group": "g"}, "abc-1", "name", {"a": 1})
    assert logger.run is None
    logger.log({"x": 1.0}, step=1)  # no-ops from here on
    logger.finish()
    assert "the trial goes on without W&B" in capsys.readouterr().err


def test_a_stopped_workers_exit_is_not_reported_as_an_ignored_exception(capsys, monkeypatch):
    import sys

    from rnncodec.sweeps.trainable import _quiet_exit_hook

    class Dies:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    monkeypatch.setattr(sys, "unraisablehook", _quiet_exit_hook)
    Dies(SystemExit(1))  # Ray's SIGTERM handler, landing in a garbage-collection callback
    assert "SystemExit" not in capsys.readouterr().err
    Dies(ValueError("a real problem"))
    assert "a real problem" in capsys.readouterr().err


def test_a_train_size_above_the_prepared_images_is_refused_before_any_trial(prepared):
    from rnncodec.sweeps.runner import prepare_data

    def spec(axes):
        return parse_spec({"name": "t", "data": {"location": prepared}, "fixed": {"epochs": 1}, "axes": axes})

    assert prepare_data(spec({"train_size": [16, 128]})) == prepared
    with pytest.raises(SweepError, match="train_size 129 exceeds the 128 prepared training images; lower it"):
        prepare_data(spec({"train_size": [16, 129]}))
