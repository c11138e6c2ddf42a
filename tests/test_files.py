"""write_atomic: regular files replaced whole, symlinks followed, special files never replaced."""

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from rnncodec.data.files import FileError, check_file_name, open_regular, staged_files, write_atomic
from rnncodec.sweeps.spec import load_spec


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    assert write_atomic(path, b"new contents") == path
    assert path.read_bytes() == b"new contents" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left behind
    write_atomic(tmp_path / "new" / "deeper" / "f.txt", "text")
    assert (tmp_path / "new" / "deeper" / "f.txt").read_text() == "text"


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "keep.bin"
    path.write_bytes(b"old")

    def half(handle):
        handle.write(b"partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        write_atomic(path, half)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    write_atomic(link, b"through the link")
    assert link.is_symlink() and target.read_bytes() == b"through the link"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "created-by-write")
    write_atomic(dangling, b"x")
    assert dangling.is_symlink() and (tmp_path / "created-by-write").read_bytes() == b"x"


def test_character_devices_are_written_through_not_replaced():
    write_atomic("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if Path("/dev/full").exists():
        with pytest.raises(FileError, match="/dev/full") as info:
            write_atomic("/dev/full", b"x" * 10)
        assert "\n" not in str(info.value)
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_fifo_is_written_through_and_never_blocks_without_a_reader(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="nothing reads the FIFO"):
        write_atomic(fifo, b"nobody listens")
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open
        try:
            write_atomic(fifo, b"hello")
            break
        except FileError:
            threading.Event().wait(0.01)
    reader.join(10)
    assert received == [b"hello"] and stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("where, words", [
    ("folder", "is a folder"),
    ("under-a-file", "cannot write"),
    ("proc", "cannot write"),
])
def test_impossible_outputs_are_one_line_errors(tmp_path, where, words):
    (tmp_path / "a-file").write_text("x")
    path = {"folder": tmp_path, "under-a-file": tmp_path / "a-file" / "out.png",
            "proc": Path("/proc/rnncodec-test/out.png")}[where]
    with pytest.raises(FileError, match=words) as info:
        write_atomic(path, b"data")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("name", ["/etc/hostname", "../x.arrow", "a/b.arrow", ".hidden", "", "..", "a\\b", 7, None])
def test_file_names_from_files_must_be_plain(name):
    with pytest.raises(Exception, match="not a plain file name"):
        check_file_name(name, "shard file")
    assert check_file_name("train-00000.arrow", "shard file") == "train-00000.arrow"


def test_only_regular_files_are_readable_inputs(tmp_path):
    """Missing paths, folders, pipes, sockets and devices are named as such (a read of a pipe could wait
    forever), and a regular file comes back open."""
    (tmp_path / "a.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    with open_regular(tmp_path / "a.png", "image") as f:
        assert f.read() == b"x"

    def problem(path, what):
        with pytest.raises(FileError) as info:
            open_regular(path, what)
        return str(info.value)

    assert problem(tmp_path / "b.png", "image") == f"no such image file: {tmp_path / 'b.png'}"
    assert problem(tmp_path / "a.png" / "c", "image").startswith("no such image file")
    assert problem(tmp_path, "checkpoint") == f"{tmp_path} is a folder; give the path of the checkpoint file"
    for special in (tmp_path / "pipe", tmp_path / "sock", "/dev/null"):
        assert problem(special, "sweep") == (f"{special} is not a regular file (a device, pipe or socket); "
                                             "give the path of the sweep file")
    sock.close()


def test_a_file_swapped_for_a_pipe_once_looked_at_is_never_waited_on(tmp_path, monkeypatch):
    """The sweep file becomes a pipe as soon as rnncodec first stats or opens it. Checked by path and then
    opened, the read would wait forever on the pipe (opened for reading, a pipe with no writer blocks);
    checked on the opened file, it reads what was there."""
    path = tmp_path / "sweep.yaml"
    path.write_text("fixed: {")
    swapped = threading.Event()

    def swapping(real):
        def call(target, *args, **kwargs):
            result = real(target, *args, **kwargs)
            if os.fspath(target) == str(path) and not swapped.is_set():
                swapped.set()
                path.unlink()
                os.mkfifo(path)
            return result
        return call

    monkeypatch.setattr(os, "stat", swapping(os.stat))
    monkeypatch.setattr(os, "open", swapping(os.open))
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(load_spec, path)), daemon=True)
    reader.start()
    reader.join(10)
    monkeypatch.undo()
    if reader.is_alive():  # let it go: a writer that closes at once ends the read
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert swapped.is_set() and outcome, "load_spec waited on a pipe swapped in after its check"
    assert outcome[0].startswith(f"{path} is not valid YAML")  # the content read before the swap


def _error_of(function, *args) -> str:
    try:
        function(*args)
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return ""


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with staged_files(out) as stage:
        (stage / "a.csv").write_text("new a")
        (stage / "b.md").write_text("new b")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.md"]
    with pytest.raises(RuntimeError, match="figure failed"):
        with staged_files(out) as stage:
            (stage / "a.csv").write_text("newer a")
            raise RuntimeError("figure failed")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.md"] and (out / "a.csv").read_text() == "new a"
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path / "fresh"):
            raise RuntimeError
    assert not (tmp_path / "fresh").exists()
    (out / "c.png").mkdir()
    with pytest.raises(FileError, match=r"c\.png is a folder where a result file goes"):
        with staged_files(out) as stage:
            (stage / "a.csv").write_text("newest a")
            (stage / "c.png").write_text("c")
    assert (out / "a.csv").read_text() == "new a"  # nothing moved: checked before the first rename
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileError, match="cannot write in .*afile/sub"):
        with staged_files(tmp_path / "afile" / "sub"):
            pass
