"""Remote storage: opening pyarrow filesystems without hanging, and prepared folders on shared or remote
filesystems (pyarrow URIs), copied once to the local cache and verified."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from rnncodec.data import cache
from rnncodec.data.errors import DataError, RnncodecError
from rnncodec.data.progress import progress_bar
from rnncodec.data.shards import MANIFEST, MAX_MANIFEST_BYTES, parse_manifest

T = TypeVar("T")
# A missing bucket or absent credentials can make a cloud filesystem retry for many minutes in silence.
TIMEOUT_S = float(os.environ.get("RNNCODEC_STORAGE_TIMEOUT", "60"))


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://…`` (``s3://``, ``gs://``, ``hdfs://``, ``file://``); False for plain paths."""
    return isinstance(location, str) and "://" in location


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """``call()``, or RnncodecError naming ``what`` if it has not returned after ``seconds`` (it goes on in
    a daemon thread, which cannot keep the process alive)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, name="rnncodec-storage", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RnncodecError(f"{what} did not answer within {seconds:g} s; check the URI, the network and your "
                            "credentials (RNNCODEC_STORAGE_TIMEOUT sets the limit)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def open_filesystem(location: str, timeout: float | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (``s3://…``, ``gs://…``, ``file://…``),
    after one listing of the path has answered (so credentials and buckets are tried now, with a time
    limit, rather than in the middle of a run)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    limit = TIMEOUT_S if timeout is None else timeout

    def connect() -> tuple[pafs.FileSystem, str]:
        fs, path = pafs.FileSystem.from_uri(location)
        fs.get_file_info(path.rstrip("/") or "/")
        return fs, path.rstrip("/")

    try:
        return within(limit, f"storage {location}", connect)
    except (OSError, pa.ArrowException, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RnncodecError(f"cannot open {location} ({first}); give a local folder or a pyarrow URI such as "
                            "s3://bucket/path, and check your credentials") from None


def resolve(location: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder for ``location``: a plain path as is, a URI through its local copy (see ``fetch``)."""
    return fetch(location, cache_dir) if is_uri(location) else Path(location).expanduser()


def _failed(what: str, uri: str, exc: BaseException) -> DataError:
    return DataError(f"cannot {what} from {uri} ({exc}); check the URI and your credentials")


def fetch(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy the prepared folder at ``uri`` into ``cache_dir/remote/`` once. The manifest is checked before
    anything is written, and every shard against its size and sha256 before the copy becomes visible. A
    changed remote manifest makes a new copy."""
    try:
        fs, root = open_filesystem(uri)
    except RnncodecError as exc:
        raise DataError(str(exc)) from None
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST}") as stream:
            manifest_bytes = stream.read(MAX_MANIFEST_BYTES + 1)
    except (OSError, pa.ArrowException) as exc:
        raise _failed(f"read {MANIFEST}", uri, exc) from None
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise DataError(f"{uri}/{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MB, which no manifest is")
    manifest = parse_manifest(manifest_bytes, f"{uri}/{MANIFEST}", "give the URI of a prepared folder")
    tag = hashlib.sha256(uri.encode() + manifest_bytes).hexdigest()[:12]
    name = manifest["name"][:48]  # a readable prefix: the lock and build folders beside it add to its length
    local = Path(cache_dir or cache.default_cache_dir()).expanduser() / "remote" / f"{name}-{tag}"
    shards = [s for entry in manifest["splits"].values() for s in entry["shards"]]

    def copy(tmp: Path) -> None:
        with progress_bar(f"copying {uri}", sum(s["bytes"] for s in shards)) as advance:
            for shard in shards:
                part = tmp / f".{shard['file']}.part"
                digest, size = hashlib.sha256(), 0
                try:
                    with fs.open_input_stream(f"{root}/{shard['file']}") as stream, open(part, "wb") as sink:
                        while (block := stream.read(1 << 24)) and size <= shard["bytes"]:
                            digest.update(block)
                            sink.write(block)
                            size += len(block)
                            advance(len(block))
                except (OSError, pa.ArrowException) as exc:
                    raise _failed(f"copy {shard['file']}", uri, exc) from None
                if size != shard["bytes"] or digest.hexdigest() != shard["sha256"]:
                    raise DataError(f"{uri}/{shard['file']} does not match its manifest (size or sha256); "
                                    "the remote copy is altered or truncated, prepare it again")
                part.rename(tmp / shard["file"])
        (tmp / MANIFEST).write_bytes(manifest_bytes)

    cache.build_once(local, copy)
    return local
