"""Writing and hashing files: the one place rnncodec writes a file and checks a file name.

``write_atomic`` never leaves a half-written file: a regular file is written to a temporary file beside
it, flushed to disk and renamed over the old one. Symlinks are followed to their target (the link
stays), and what is not a regular file is never replaced: a FIFO or a character device (``/dev/null``,
``/dev/stdout``) is written through, anything else is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from rnncodec.data.errors import RnncodecError

_UMASK = os.umask(0)
os.umask(_UMASK)
Content = bytes | str | Callable[[BinaryIO], None]


class FileError(RnncodecError):
    """A file cannot be written or read where the user asked."""


def reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def open_regular(path: str | Path, what: str, error: type[Exception] = FileError) -> BinaryIO:
    """``path`` opened for binary reading, or ``error`` with why it cannot be read as a ``what`` file
    ("image", "checkpoint", …), in one line: missing, a folder, or not a regular file (a device or pipe,
    which a read could wait on forever). The check is made on the opened file, which is opened without
    waiting, so a file swapped for a pipe after a check cannot hang the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"no such {what} file: {path}") from None
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a socket
            raise error(f"cannot read {path} ({reason(exc)}); give the path of a readable {what} file") from None
        mode = stat.S_IFSOCK
    else:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
    if stat.S_ISDIR(mode):
        raise error(f"{path} is a folder; give the path of the {what} file")
    if not stat.S_ISREG(mode):
        raise error(f"{path} is not a regular file (a device, pipe or socket); give the path of the {what} file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_limited(path: str | Path, what: str, limit: int, fix: str, error: type[Exception] = FileError) -> bytes:
    """The bytes of a small ``what`` file (see :func:`open_regular`), never reading more than ``limit`` + 1;
    ``error`` ending in ``fix`` when it is larger or a read fails."""
    with open_regular(path, what, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {path} ({reason(exc)}); {fix}") from None
    if len(data) > limit:
        raise error(f"{path} is larger than {limit >> 20} MB, which no {what} file is; {fix}")
    return data


def file_in_the_way(path: str | Path) -> Path | None:
    """The existing file (not folder) among ``path``'s parents, which stops anything being made there."""
    return next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)


def check_output(path: str | Path, *inputs: str | Path) -> None:
    """Refuse, before any work, an output file path that cannot be written: a folder, a path under a file,
    or one of the ``inputs`` (writing it would destroy the input)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FileError(f"{path} is a folder; give a file name inside it")
    if blocking := file_in_the_way(path):
        raise FileError(f"{blocking} is a file, not a folder; choose a folder you can write to")
    for source in inputs:
        try:
            same = os.path.samefile(path, source)
        except OSError:  # either is missing or unreadable: not the same file
            same = False
        if same:
            raise FileError(f"{path} is the input file itself; give another output path")


def check_output_folder(path: str | Path) -> None:
    """Refuse, before any work, an output folder that is a file or lies under one."""
    path = Path(path).expanduser()
    if blocking := path if path.exists() and not path.is_dir() else file_in_the_way(path):
        raise FileError(f"{blocking} is a file, not a folder; give a folder for the results")


def _write(handle: BinaryIO, content: Content) -> None:
    if callable(content):
        content(handle)
    else:
        handle.write(content.encode() if isinstance(content, str) else content)


def _write_through(path: Path, target: Path, mode: int, content: Content) -> None:
    """Write into an existing FIFO or character device without replacing it (never blocking on a FIFO
    that nobody reads)."""
    try:
        fd = os.open(target, os.O_WRONLY | (os.O_NONBLOCK if stat.S_ISFIFO(mode) else 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise FileError(f"nothing reads the FIFO {path}; start its reader first or give a file name") from None
        raise FileError(f"cannot write {path} ({reason(exc)}); choose another output") from None
    os.set_blocking(fd, True)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write(handle, content)
    except OSError as exc:
        raise FileError(f"cannot write {path} ({reason(exc)}); choose another output") from None


def write_atomic(path: str | Path, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a function writing to a binary handle) to ``path``, creating
    its folder; returns the path written. Raises :class:`FileError` in one line on any failure."""
    path = Path(path).expanduser()
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise FileError(f"cannot write {path} ({reason(exc)}); choose another output") from None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise FileError(f"{path} is a folder; give a file name inside it")
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            _write_through(path, target, mode, content)
            return path
        raise FileError(f"{path} is not a regular file (a socket or block device); give a file name")
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            _write(handle, content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        where = f"{path} (its folder {target.parent})" if exc.filename and str(exc.filename) != str(target) else path
        raise FileError(f"cannot write {where}: {reason(exc)}; choose a writable location") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """A hidden folder inside ``folder`` to write a set of files into. When the block ends normally each
    file is renamed into ``folder``; when it fails none is, so the set there before stays whole (a report
    is never half new, half old)."""
    folder = Path(folder).expanduser()
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    except OSError as exc:
        raise FileError(f"cannot write in {folder} ({reason(exc)}); choose a folder you can write to") from None
    done = False
    try:
        yield stage
        written = sorted(stage.iterdir())
        if blocked := [folder / p.name for p in written if (folder / p.name).is_dir()]:
            raise FileError(f"{blocked[0]} is a folder where a result file goes; remove it or choose another folder")
        try:
            for path in written:
                os.replace(path, folder / path.name)
        except OSError as exc:
            raise FileError(f"cannot write in {folder} ({reason(exc)}); choose a folder you can write to") from None
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not done and not any(folder.iterdir()):
            folder.rmdir()


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON with sorted keys, atomically."""
    return write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 16 MiB blocks (memory stays flat whatever its size)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _encodable(name: str) -> bool:
    try:
        return len(os.fsencode(name)) <= 240  # room for ".NAME.part" and the like
    except UnicodeEncodeError:  # a lone surrogate
        return False


def check_file_name(name: Any, what: str) -> str:
    """``name`` if it is a plain file name (no folder part, no ``..``, not hidden) that the filesystem can
    hold, else RnncodecError: names read from files (manifests, archives) must never reach outside their
    folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name or not _encodable(name)):
        shown = repr(name)[:80]
        raise RnncodecError(f"{what} {shown} is not a plain file name inside its folder; the file is damaged "
                            "or hostile, do not use it")
    return name
