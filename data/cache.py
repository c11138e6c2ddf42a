"""The on-disk cache: where it lives, how entries are keyed, and how one entry is built exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def default_cache_dir() -> Path:
    """``$RNNCODEC_CACHE``, else ``$XDG_CACHE_HOME/rnncodec``, else ``~/.cache/rnncodec``."""
    if env := os.environ.get("RNNCODEC_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rnncodec"


def cache_key(params: dict) -> str:
    """A hex digest of JSON-serialisable parameters, independent of key order."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Build ``final`` with ``build(tmp_folder)`` unless it exists; return whether this call built it.

    Concurrent callers serialise on a lock file beside ``final``; the build happens in a temporary
    sibling folder that is renamed into place only when complete, and removed on any failure.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
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
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        shutil.rmtree(folder, ignore_errors=True)
