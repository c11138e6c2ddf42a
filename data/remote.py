"""Remote storage: opening pyarrow filesystems without hanging, and prepared folders on shared or remote
filesystems (pyarrow URIs): published once from the machine that prepared them, copied once to each
machine's local cache and verified."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from rnncodec.data import cache
from rnncodec.data.errors import DataError, RnncodecError
from rnncodec.data.progress import progress_bar
from rnncodec.data.shards import MANIFEST, MAX_MANIFEST_BYTES, parse_manifest, read_manifest

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


def _probe(fs: pafs.FileSystem, limit: float) -> pafs.FileSystem:
    """``fs`` or, for S3, a copy whose requests give up after a tenth of ``limit`` without an answer (at
    least 1 s, curl's resolution): pyarrow waits for requests still running when the process exits, and
    its defaults keep a silent endpoint's request running for minutes after ``within`` has given up."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    _, (options,) = fs.__reduce__()  # the filesystem's options, as pickling copies them
    seconds = max(1.0, limit / 10)
    return pafs.S3FileSystem(**{**options, "connect_timeout": seconds, "request_timeout": seconds})


def check_no_secret(location: str) -> None:
    """Refuse a URI that carries a password (named without the URI, which holds the secret)."""
    if is_uri(location) and urlsplit(location).password is not None:
        raise RnncodecError("a storage URI holds a secret key; give credentials through the environment "
                            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) or the "
                            "machine's role, never in the URI, which is printed and stored")


def open_filesystem(location: str, timeout: float | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (``s3://…``, ``gs://…``, ``file://…``),
    after one listing of the path has answered (so credentials and buckets are tried now, with a time
    limit, rather than in the middle of a run)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    check_no_secret(location)
    limit = TIMEOUT_S if timeout is None else timeout

    def connect() -> tuple[pafs.FileSystem, str]:
        fs, path = pafs.FileSystem.from_uri(location)
        _probe(fs, limit).get_file_info(path.rstrip("/") or "/")
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


def _remote(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return open_filesystem(uri)
    except RnncodecError as exc:
        raise DataError(str(exc)) from None


def _remote_manifest(fs: pafs.FileSystem, root: str, uri: str) -> bytes:
    """The bytes of the manifest at ``uri`` (at most one more than a manifest may hold)."""
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST}") as stream:
            return stream.read(MAX_MANIFEST_BYTES + 1)
    except (OSError, pa.ArrowException) as exc:
        raise _failed(f"read {MANIFEST}", uri, exc) from None


def publish(folder: str | Path, uri: str) -> str:
    """Copy the prepared ``folder`` to ``uri`` (e.g. into a sweep's S3 folder) so that machines sharing no
    disk with this one can ``fetch`` it; return ``uri``. The shards go first and the manifest last, so a
    reader never finds a manifest whose shards are missing; a copy with the same manifest is kept."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    manifest_bytes = (folder / MANIFEST).read_bytes()
    names = [s["file"] for entry in manifest["splits"].values() for s in entry["shards"]] + [MANIFEST]
    fs, root = _remote(uri)
    try:
        there = fs.get_file_info(f"{root}/{MANIFEST}").type == pafs.FileType.File
        if there and _remote_manifest(fs, root, uri) == manifest_bytes:
            return uri
        fs.create_dir(root, recursive=True)
        with progress_bar(f"copying {folder.name} to {uri}", len(names)) as advance:
            for name in names:
                pafs.copy_files(str(folder / name), f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)
                advance(1)
    except (OSError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"cannot copy {folder} to {uri} ({first}); check the URI and your credentials") from None
    return uri


def fetch(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy the prepared folder at ``uri`` into ``cache_dir/remote/`` once. The manifest is checked before
    anything is written, and every shard against its size and sha256 before the copy becomes visible. A
    changed remote manifest makes a new copy."""
    fs, root = _remote(uri)
    manifest_bytes = _remote_manifest(fs, root, uri)
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
