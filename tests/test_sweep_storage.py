"""Tune's files in a sweep folder, without Ray: copies that are whole or absent, and damaged state
found before a resume."""

import gc
import json
import os
import pickle
import re

import pyarrow.fs as pafs
import pytest

from rnncodec.sweeps.spec import SweepError
from rnncodec.sweeps.storage import (
    AtomicLocalFiles,
    check_tune_state,
    checkpoints,
    meta_problem,
    read_sweep_file,
    tune_storage,
)

ATOMIC = pafs.PyFileSystem(AtomicLocalFiles())


LOCAL = pafs.LocalFileSystem()


def test_a_copy_into_local_storage_appears_whole_and_an_abandoned_one_not_at_all(tmp_path):
    (tmp_path / "src" / "checkpoint_000001").mkdir(parents=True)
    body = os.urandom(3 << 20)
    (tmp_path / "src" / "checkpoint_000001" / "state.pt").write_bytes(body)
    pafs.copy_files(str(tmp_path / "src"), str(tmp_path / "dst"), destination_filesystem=ATOMIC)
    assert (tmp_path / "dst" / "checkpoint_000001" / "state.pt").read_bytes() == body

    target = tmp_path / "dst" / "experiment_state-x.json"
    target.write_bytes(b"old")
    stream = ATOMIC.open_output_stream(str(target))
    stream.write(b"new, but cut short")
    assert target.read_bytes() == b"old"  # a driver killed here leaves the previous version
    del stream
    gc.collect()
    assert target.read_bytes() == b"old" and sorted(os.listdir(target.parent)) == ["checkpoint_000001", target.name]
    with ATOMIC.open_output_stream(str(target)) as stream:
        stream.write(b"new")
    assert target.read_bytes() == b"new"
    assert pickle.loads(pickle.dumps(ATOMIC)) == ATOMIC  # Tune ships it to every trial's worker


def test_tune_gets_the_atomic_filesystem_only_for_local_storage(tmp_path):
    path, fs = tune_storage(str(tmp_path / "sweep"))
    assert path == str(tmp_path) and fs == ATOMIC
    path, fs = tune_storage(f"file://{tmp_path}/sweep")
    assert path == str(tmp_path) and fs == ATOMIC


def _sweep_folder(tmp_path, trials, grid_state):
    (tmp_path / "experiment_state-2026-11-26_15-38-19.json").write_text(
        json.dumps({"trial_data": [["{}", "{}"]] * trials, "runner_data": {}}))
    (tmp_path / "basic-variant-state-2026-11-26_15-38-19.json").write_bytes(grid_state)
    return str(tmp_path)


def test_a_cut_short_grid_state_is_set_aside_when_every_trial_exists(tmp_path):
    whole = pickle.dumps({"_finished": True, "_total_samples": 2})
    notes = []
    check_tune_state(_sweep_folder(tmp_path, 2, whole), 2, notes.append)
    assert notes == [] and (tmp_path / "basic-variant-state-2026-11-26_15-38-19.json").read_bytes() == whole

    for cut in (b"", whole[: len(whole) // 2], whole[:-1], whole + b"x"):
        check_tune_state(_sweep_folder(tmp_path, 2, cut), 2, notes.append)
        assert not (tmp_path / "basic-variant-state-2026-11-26_15-38-19.json").exists()
        assert (tmp_path / "basic-variant-state-2026-11-26_15-38-19.json.damaged").read_bytes() == cut
        assert "set aside" in notes.pop()


def test_damaged_tune_state_that_cannot_be_done_without_is_a_one_line_error(tmp_path):
    cut = pickle.dumps({"_total_samples": 4})[:-3]
    with pytest.raises(SweepError, match=r"basic-variant-state.*cut short.*new --name"):
        check_tune_state(_sweep_folder(tmp_path, 2, cut), 4, print)  # trials 3 and 4 exist only in it
    assert (tmp_path / "basic-variant-state-2026-11-26_15-38-19.json").read_bytes() == cut
    state = tmp_path / "experiment_state-2026-11-26_15-38-19.json"
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(SweepError, match=r"experiment_state.*cut short") as info:
        check_tune_state(str(tmp_path), 2, print)
    assert "\n" not in str(info.value)
    state.unlink()
    os.mkfifo(state)  # opened, it would block Tune forever
    with pytest.raises(SweepError, match=r"experiment_state.*cut short or damaged"):
        check_tune_state(str(tmp_path), 2, print)


def test_a_sweep_file_that_is_a_device_or_pipe_is_damage_not_a_hang(tmp_path):
    (tmp_path / "sweep.json").symlink_to("/dev/zero")  # read whole, it would fill the memory
    with pytest.raises(SweepError, match=r"sweep\.json is damaged \(not a regular file\)"):
        read_sweep_file(str(tmp_path))
    (tmp_path / "sweep.json").unlink()
    os.mkfifo(tmp_path / "sweep.json")
    with pytest.raises(SweepError, match=r"sweep\.json is damaged \(not a regular file\)"):
        read_sweep_file(str(tmp_path))


GOOD_META = {"epoch": 2, "report": 1, "state_bytes": 10, "repeat": 0, "params": {"batch_size": 8, "grad_clip": None},
             "history": [{"epoch": 1, "steps": 5, "wall_time": 1.5, "device": "cpu", "val/psnr": float("nan"),
                          "probes": [{"steps": 3, "val/psnr": 20.0}]}]}


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"epoch": "2"}, "epoch is not a whole number"),
    ({"epoch": 10**300}, "epoch is not a whole number"),
    ({"state_bytes": "10"}, "state_bytes is not a whole number"),
    ({"params": [1]}, "params is not a mapping of plain values"),
    ({"params": {"batch_size": [8]}}, "params is not a mapping of plain values"),
    ({"history": {"epoch": 1}}, "history is not a list"),
    ({"history": [{"epoch": 1}]}, r"history\[0\] lacks a whole epoch and step count"),
    ({"history": [{"epoch": 1, "steps": "5"}]}, r"history\[0\] lacks a whole epoch and step count"),
    ({"history": [{"epoch": 1, "steps": 5, "wall_time": "x"}]}, r"history\[0\]\.wall_time is a str, not a number"),
    ({"history": [{"epoch": 1, "steps": 5, "probes": 5}]}, r"history\[0\]\.probes is not a list"),
    ({"history": [{"epoch": 1, "steps": 5, "probes": [{"val/psnr": 1.0}]}]}, r"history\[0\]\.probes is not a list"),
])
def test_a_damaged_meta_is_named_and_passed_over(tmp_path, change, problem):
    meta = {**GOOD_META, **change}
    folder = tmp_path / "trial" / "checkpoint_000001"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    (epoch, _, read, why), = checkpoints(LOCAL, str(tmp_path / "trial"))
    if problem is None:
        assert meta_problem(meta) is None and epoch == 2 and read is not None and why is None
    else:
        assert re.search(problem, meta_problem(meta)) and epoch == -1 and read is None
        assert re.search(f"meta.json {problem}", why)


def test_a_damaged_trials_file_and_meta_are_read_around_and_named(tmp_path):
    from rnncodec.sweeps.results import collect, damaged

    spec = {"name": "t", "data": {"source": "sample"}, "fixed": {"epochs": 2}, "axes": {"batch_size": [8, 16]}}
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": spec, "context": {"data": "x"}}))
    (tmp_path / "trials.json").write_text(json.dumps({
        "trial_0": {"status": ["x"], "failures": "many", "started": "yesterday", "error": {"a": 1},
                    "config": {"point": 5, "batch_size": [8], "repeat": 0}},
        "trial_1": "not a mapping"}))
    folder = tmp_path / "trial_0" / "checkpoint_000000"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({**GOOD_META, "history": [{"epoch": "1"}]}))
    _, trials = collect(str(tmp_path))
    first = trials[0]
    assert (first["status"], first["failures"], first["error"], first["started"]) == ("PENDING", 0, None, None)
    assert first["params"]["batch_size"] == 32 and first["history"] == []  # the listed value dropped: the default
    (note,) = damaged(trials)
    assert note.startswith(str(folder)) and "meta.json history[0] lacks a whole epoch" in note
    cut = tmp_path / "trial_0" / "checkpoint_000001"  # a copy cut short before its meta.json
    cut.mkdir()
    (cut / "state.pt").write_bytes(b"x")
    assert damaged(collect(str(tmp_path))[1])[0] == f"{cut}: meta.json absent (a copy under way, or one cut short)"
