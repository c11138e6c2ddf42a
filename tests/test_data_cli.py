"""``rnncodec data prepare|info`` through the real command-line entry point."""

import json
from pathlib import Path

import pytest
from PIL import Image

from rnncodec.sweeps.cli import main


def test_prepare_prints_the_folder_and_info_describes_it(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "sample",
                "--rotations",
                "2",
                "--size",
                "2000",
                "--seed",
                "3",
                "--cache-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == tmp_path and (folder / "manifest.json").is_file()
    grid = tmp_path / "grid.png"
    assert main(["data", "info", str(folder), "--grid", str(grid), "--samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "2,000" in out and "sha256 verified" in out and '"rotations": 2' in out
    assert Image.open(grid).size == (8 * (2 * 32 + 2) + 2, 3 * (2 * 32 + 2) + 2)  # 20 images, 8 a row, shown 2×


def test_prepare_into_out_dir(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["data", "prepare", "--source", "sample", "--out", str(out), "--cache-dir", str(tmp_path)]) == 0
    assert json.loads((out / "manifest.json").read_text())["name"] == "set"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "--source", "mnist"], "unknown source 'mnist'"),
        (["prepare", "--source", "sample", "--rotations", "0"], "--rotations 0"),
        (["info", "/nonexistent/folder"], "no such folder: /nonexistent/folder; give a folder made by"),
    ],
)
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert main(["data", *argv, *(["--cache-dir", str(tmp_path)] if argv[0] == "prepare" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnncodec: error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("command", ["prepare", "info"])
def test_subcommands_have_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["data", command, "--help"])
    assert done.value.code == 0 and "usage: rnncodec data " + command in capsys.readouterr().out


def test_info_refuses_a_grid_it_cannot_write_in_one_line(tmp_path, capsys):
    folder = tmp_path / "set"
    assert main(["data", "prepare", "--source", "sample", "--out", str(folder), "--cache-dir", str(tmp_path)]) == 0
    (tmp_path / "a-file").write_text("x")
    for grid, words in ((tmp_path / "a-file" / "g.png", "cannot write"), (tmp_path, "is a folder"),
                        (Path("/proc/rnncodec-test/g.png"), "cannot write")):
        capsys.readouterr()
        assert main(["data", "info", str(folder), "--no-verify", "--grid", str(grid)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rnncodec: error: ") and words in err and "\n" not in err
