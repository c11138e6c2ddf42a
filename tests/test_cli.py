"""The ``rnncodec`` command line, run as a user runs it: a real process, real files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RNNCODEC = str(Path(sys.executable).parent / "rnncodec")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RNNCODEC, *args], capture_output=True, text=True, timeout=600)


def _fails_cleanly(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnncodec: error: ") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny codec trained for a few steps on a folder of two photographs."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64 + 16 * i, 80, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    ckpt = folder.parent / "tiny.pt"
    result = run("train", "--data", str(folder), "--out", str(ckpt), "--steps", "3", "--width", "0.125",
                 "--iterations", "2", "--batch-size", "4", "--cell", "gru", "--mode", "residual-scaling")
    assert result.returncode == 0, result.stderr
    assert "held-out PSNR" in result.stderr
    return ckpt


@pytest.mark.parametrize("command", [[], ["train"], ["compress"], ["decompress"], ["data"], ["sweep"], ["eval"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: rnncodec" in result.stdout


def test_compress_then_decompress_full_and_a_prefix(trained, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    result = run("compress", str(tmp_path / "in.png"), str(tmp_path / "in.rnnc"), "--checkpoint", str(trained),
                 "--iterations", "2")
    assert result.returncode == 0, result.stderr
    size = (tmp_path / "in.rnnc").stat().st_size
    assert size == 29 + 2 * (3 * 5 * 32 // 8 + 4)
    for extra in ([], ["--iterations", "1"]):
        result = run("decompress", str(tmp_path / "in.rnnc"), str(tmp_path / "out.png"), "--checkpoint", str(trained), *extra)
        assert result.returncode == 0, result.stderr
        assert Image.open(tmp_path / "out.png").size == (70, 45)


def test_bad_input_gives_one_clear_line(trained, tmp_path):
    _fails_cleanly(run("compress", str(tmp_path / "nope.png"), str(tmp_path / "x"), "--checkpoint", str(trained)),
                   "no such image file")
    (tmp_path / "text.png").write_text("hello")
    _fails_cleanly(run("compress", str(tmp_path / "text.png"), str(tmp_path / "x"), "--checkpoint", str(trained)),
                   "is not a readable image")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ok.png")
    _fails_cleanly(run("compress", str(tmp_path / "ok.png"), str(tmp_path / "x"), "--checkpoint", str(tmp_path / "ok.png")),
                   "is not a readable checkpoint")
    _fails_cleanly(run("decompress", str(tmp_path / "ok.png"), str(tmp_path / "y.png"), "--checkpoint", str(trained)),
                   "not an rnncodec file")
    _fails_cleanly(run("train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt")), "no such folder")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.png").exists()
    usage = run("compress", str(tmp_path / "ok.png"), str(tmp_path / "x"), "--checkpoint", str(trained), "--iterations", "17")
    assert usage.returncode == 2 and "must be in 1..16" in usage.stderr


def test_train_reads_prepared_arrow_shards(tmp_path):
    shards = tmp_path / "shards"
    prepared = run("data", "prepare", "--source", "sample", "--out", str(shards))
    assert prepared.returncode == 0, prepared.stderr
    result = run("train", "--data", str(shards), "--out", str(tmp_path / "m.pt"), "--steps", "2", "--width", "0.125",
                 "--iterations", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "prepared patches" in result.stderr and (tmp_path / "m.pt").is_file()


def test_train_can_start_from_a_checkpoint(trained, tmp_path):
    result = run("train", "--data", "sample", "--out", str(tmp_path / "m.pt"), "--init", str(trained), "--steps", "1",
                 "--width", "0.125", "--iterations", "2", "--batch-size", "4", "--cell", "gru", "--mode", "additive")
    assert result.returncode == 0, result.stderr
    assert f"weights from {trained}" in result.stderr
    _fails_cleanly(run("train", "--data", "sample", "--out", str(tmp_path / "w.pt"), "--init", str(trained),
                       "--steps", "1", "--width", "0.25", "--cell", "gru"), "same cell and width")
