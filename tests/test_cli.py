"""The ``rnncodec`` command line, run as a user runs it: a real process, real files."""

import os
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
    decoded = {}
    for coding in ("--raw", "--entropy-coding"):
        result = run("compress", str(tmp_path / "in.png"), str(tmp_path / f"in{coding}.rnnc"), "--checkpoint",
                     str(trained), "--iterations", "2", coding)
        assert result.returncode == 0, result.stderr
        for extra in ([], ["--iterations", "1"]):
            result = run("decompress", str(tmp_path / f"in{coding}.rnnc"), str(tmp_path / "out.png"), "--checkpoint",
                         str(trained), *extra)
            assert result.returncode == 0, result.stderr
            decoded[coding, len(extra)] = np.asarray(Image.open(tmp_path / "out.png"))
            assert decoded[coding, len(extra)].shape == (45, 70, 3)
    assert (tmp_path / "in--raw.rnnc").stat().st_size == 29 + 2 * (3 * 5 * 32 // 8 + 4)
    assert (tmp_path / "in--entropy-coding.rnnc").read_bytes()[4] == 2  # version 2: entropy coded
    result = run("compress", str(tmp_path / "in.png"), str(tmp_path / "default.rnnc"), "--checkpoint", str(trained),
                 "--iterations", "2")
    assert result.returncode == 0 and (tmp_path / "default.rnnc").read_bytes()[4] == 2  # as the help says
    for extra in (0, 2):
        assert np.array_equal(decoded["--raw", extra], decoded["--entropy-coding", extra])  # lossless


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
    os.mkfifo(tmp_path / "pipe")  # nothing ever writes to it: reading it would hang
    _fails_cleanly(run("decompress", str(tmp_path / "pipe"), str(tmp_path / "y.png"), "--checkpoint", str(trained)),
                   "pipe is not a regular file")
    _fails_cleanly(run("compress", str(tmp_path), str(tmp_path / "x"), "--checkpoint", str(trained)), "is a folder")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.png").exists()
    usage = run("compress", str(tmp_path / "ok.png"), str(tmp_path / "x"), "--checkpoint", str(trained), "--iterations", "17")
    assert usage.returncode == 2 and "must be in 1..16" in usage.stderr
    usage = run("train", "--data", "sample", "--out", str(tmp_path / "m.pt"), "--iterations", "25")
    assert usage.returncode == 2 and "must be in 1..24" in usage.stderr  # training may pass 16, up to 24
    usage = run("train", "--data", "sample", "--out", str(tmp_path / "m.pt"), "--batch-size", "100000000")
    assert usage.returncode == 2 and "must be in 1..65536" in usage.stderr  # not a 286 GiB allocation


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


def _bomb_png(path: Path, side: int = 11_000) -> Path:
    """A PNG whose header declares side×side pixels; its pixel data is never reached."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("where", ["under-a-file", "a-folder", "proc"])
def test_outputs_that_cannot_be_written_are_one_line_errors(trained, tmp_path, where):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "a-file").write_text("x")
    out = {"under-a-file": tmp_path / "a-file" / "out", "a-folder": tmp_path,
           "proc": Path("/proc/rnncodec-test/out")}[where]
    words = {"a-folder": "is a folder", "under-a-file": "a-file is a file, not a folder"}.get(where, "cannot write")
    ck = ["--checkpoint", str(trained)]
    _fails_cleanly(run("compress", str(tmp_path / "in.png"), str(out), *ck, "--iterations", "1"), words)
    run("compress", str(tmp_path / "in.png"), str(tmp_path / "in.rnnc"), *ck, "--iterations", "1")
    _fails_cleanly(run("decompress", str(tmp_path / "in.rnnc"), str(out), *ck), words)


def test_an_output_that_is_the_input_or_empty_is_refused_and_paths_print_as_given(trained, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    ck = ["--checkpoint", str(trained)]
    _fails_cleanly(run("compress", str(tmp_path / "in.png"), str(tmp_path / "in.png"), *ck), "is the input file itself")
    assert (tmp_path / "in.png").read_bytes() == before
    usage = run("compress", str(tmp_path / "in.png"), "", *ck)
    assert usage.returncode == 2 and "argument out: is empty; give a value" in usage.stderr
    odd = tmp_path / "[red]x[/]:cross_mark:.rnnc"  # rich would read markup and emoji codes in it
    result = run("compress", str(tmp_path / "in.png"), str(odd), *ck, "--iterations", "1")
    assert result.returncode == 0 and f"wrote {odd}:" in result.stderr, result.stderr
    link = tmp_path / "same.rnnc"
    link.symlink_to(odd)
    _fails_cleanly(run("decompress", str(odd), str(link), *ck), "is the input file itself")
    _fails_cleanly(run("eval", "--images", str(tmp_path), "--out", str(tmp_path / "in.png"), *ck),
                   "in.png is a file, not a folder; give a folder for the results")
    _fails_cleanly(run("train", "--data", "sample", "--out", str(tmp_path)), "is a folder; give a file name inside it")


def test_image_bombs_and_animations_are_refused_before_decoding(trained, tmp_path):
    _fails_cleanly(run("compress", str(_bomb_png(tmp_path / "bomb.png")), str(tmp_path / "x"), "--checkpoint",
                       str(trained)), "split it into smaller images")
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    _fails_cleanly(run("compress", str(tmp_path / "anim.gif"), str(tmp_path / "x"), "--checkpoint", str(trained)),
                   "holds 2 frames")
    assert not (tmp_path / "x").exists()


def test_arguments_out_of_range_are_refused_before_any_work(tmp_path):
    usage = run("data", "info", str(tmp_path), "--samples", "-1")
    assert usage.returncode == 2 and "must be a positive finite number" in usage.stderr and "Traceback" not in usage.stderr
    _fails_cleanly(run("eval", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--iterations", "1-60000000"),
                   "iterations must lie in 1..16")


@pytest.mark.parametrize("storage, message", [
    ("/proc/rnncodec-test", "is not writable"),
    ("/dev/null/sweeps", "is not writable"),
    ("gs://rnncodec-missing-bucket/x", "storage"),
])
def test_bad_storage_is_refused_before_data_is_prepared(tmp_path, monkeypatch, storage, message):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\ndata: {source: sample}\nfixed: {epochs: 1, steps_per_epoch: 1, width: 0.125}\n")
    monkeypatch.setenv("RNNCODEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RNNCODEC_STORAGE_TIMEOUT", "3")
    result = run("sweep", "run", str(spec), "--storage", storage)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("checking storage") and len(lines) == 2, result.stderr  # says what it waits for
    assert lines[1].startswith("rnncodec: error: ") and message in lines[1], result.stderr
    assert not (tmp_path / "cache").exists()


def test_usage_errors_are_one_line_and_a_diverging_training_saves_nothing(tmp_path):
    usage = run("eval", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--qualities", "0")
    lines = [line for line in usage.stderr.splitlines() if line.strip()]
    assert usage.returncode == 2 and len(lines) == 1, usage.stderr
    assert lines[0].startswith("rnncodec eval: error: argument --qualities") and "(see rnncodec eval --help)" in lines[0]
    _fails_cleanly(run("train", "--data", "sample", "--out", str(tmp_path / "m.pt"), "--device", "meta"),
                   "unknown device 'meta'; use auto, cpu or cuda[:N]")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "a.png")
    _fails_cleanly(run("eval", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--crop", "16"),
                   "the crop size must be at least 161 pixels")
    diverged = run("train", "--data", "sample", "--width", "0.125", "--batch-size", "4", "--iterations", "2",
                   "--steps", "3", "--lr", "1e30", "--out", str(tmp_path / "m.pt"))  # after its progress lines:
    assert diverged.returncode == 2 and "Traceback" not in diverged.stderr
    assert diverged.stderr.strip().splitlines()[-1] == ("rnncodec: error: training diverged by step 3 (the loss is "
                                                        "nan); the diverged weights were not saved: lower --lr or set "
                                                        "--grad-clip")
    assert not (tmp_path / "m.pt").exists()
    _fails_cleanly(run("train", "--data", "sample", "--steps", "1", "--weight-decay", "nan", "--out",
                       str(tmp_path / "m.pt")), "weight_decay must be a finite number ≥ 0")
    shards = tmp_path / "shards"
    assert run("data", "prepare", "--source", "sample", "--val-fraction", "0", "--out", str(shards)).returncode == 0
    _fails_cleanly(run("data", "info", str(shards), "--split", "val", "--grid", str(tmp_path / "g.png")),
                   "the val split of")
