"""One trial without Ray: exact resume, unreadable checkpoints, W&B offline runs."""

import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rnncodec import data
from rnncodec.sweeps.spec import parse_spec, trial_key
from rnncodec.sweeps.trainable import InjectedFailure, checkpoints, run_trial

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


def test_unreadable_checkpoint_falls_back_to_the_previous_then_restarts(tmp_path, prepared, params):
    trial = Folder(tmp_path / "trial")
    short = {**params, "epochs": 2}
    trial.run(short, data=prepared)
    newest = checkpoints(LOCAL, str(trial.path))
    assert [e for e, _, _ in newest] == [2, 1]
    (Path(newest[0][1]) / "state.pt").write_bytes(b"not a checkpoint")
    warnings = []
    trial.run(short, data=prepared, warn=warnings.append)
    assert len(warnings) == 1 and "is unreadable" in warnings[0] and "trying the older" in warnings[0]
    # epoch 2 was trained again from the epoch-1 checkpoint
    assert [m["epoch"] for m in trial.metrics[2:]] == [2]
    assert trial.metrics[2]["resumed_from_epoch"] == 1
    assert trial.metrics[2]["val/psnr"] == trial.metrics[1]["val/psnr"]  # same numbers as the first time

    for _, folder, _ in checkpoints(LOCAL, str(trial.path)):
        (Path(folder) / "state.pt").write_bytes(b"")
    warnings.clear()
    trial.metrics.clear()
    trial.run(short, data=prepared, warn=warnings.append)
    assert "restarting the trial from epoch 0" in warnings[-1]
    assert [m["epoch"] for m in trial.metrics] == [1, 2]


def test_checkpoint_of_another_trial_is_not_used(tmp_path, prepared, params):
    trial = Folder(tmp_path / "trial")
    trial.run({**params, "epochs": 1}, data=prepared)
    warnings = []
    trial.run({**params, "epochs": 1, "lr": 1e-3}, data=prepared, warn=warnings.append)
    assert "belongs to another trial" in warnings[0]
    assert trial.metrics[-1]["resumed_from_epoch"] == -1


def test_wandb_offline_run_keeps_its_id_across_resume(tmp_path, prepared, params, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    settings = {"mode": "offline", "project": "rnncodec-test", "entity": None, "group": "g",
                "images_every": 1, "images": 4, "dir": str(tmp_path / "wb")}
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
