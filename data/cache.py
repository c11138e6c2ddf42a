"""The on-disk cache: where it lives, how entries are keyed, and how one entry is built exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from rnncodec.data.files import FileError, file_in_the_way, reason


def default_cache_dir() -> Path:
    """``$RNNCODEC_CACHE``, else ``$XDG_CACHE_HOME/rnncodec``, else ``~/.cache/rnncodec``."""
    if env := os.environ.get("RNNCODEC_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rnncodec"


def cache_key(params: dict) -> str:
    """A hex digest of JSON-serialisable parameters, independent of key order."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def lock_beside(path: Path) -> FileLock:
    """The lock file ``.NAME.lock`` beside ``path``, its folder made first. FileError in one line when
    either cannot be made (FileLock itself would wait forever, taking the failure for a held lock)."""
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(lock, os.O_CREAT | os.O_RDWR, 0o666))
    except (FileExistsError, NotADirectoryError):
        blocking = file_in_the_way(path) or path.parent
        raise FileError(f"{blocking} is a file, not a folder; choose a folder you can write to") from None
    except OSError as exc:
        raise FileError(f"cannot write in {path.parent} ({reason(exc)}); choose a folder you can write to") from None
    return FileLock(str(lock))


def build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Build ``final`` with ``build(tmp_folder)`` unless it exists; return whether this call built it.

    Concurrent callers serialise on a lock file beside ``final``; the build happens in a temporary
    sibling folder that is renamed into place only when complete, and removed on any failure.
    """
    with lock_beside(final):
        if final.exists():
            return False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed builder: we hold the lock
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True


def remove(folder: Path) -> None:
    """Delete a cache entry under its lock, so no reader or builder sees it half-removed."""
    with lock_beside(folder):
        shutil.rmtree(folder, ignore_errors=True)
