"""Prepared folders on shared or remote filesystems (pyarrow URIs), copied once to the local cache and verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from data import cache
from data.errors import DataError
from data.progress import progress_bar
from data.shards import MANIFEST, read_manifest


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://…`` (``s3://``, ``gs://``, ``hdfs://``, ``file://``); False for plain paths."""
    return isinstance(location, str) and "://" in location


def resolve(location: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder for ``location``: a plain path as is, a URI through its local copy (see ``fetch``)."""
    return fetch(location, cache_dir) if is_uri(location) else Path(location).expanduser()


def _read(fs: pafs.FileSystem, path: str, uri: str) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} from {uri} ({exc}); check the URI and your credentials") from exc


def fetch(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy the prepared folder at ``uri`` into ``cache_dir/remote/`` once; shards are checked against the
    manifest's sha256 before the copy becomes visible. A changed remote manifest makes a new copy."""
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"cannot open {uri} ({exc}); give a local folder or a pyarrow URI such as s3://bucket/dataset"
        ) from exc
    root = root.rstrip("/")
    manifest_bytes = _read(fs, f"{root}/{MANIFEST}", uri)
    try:
        name = json.loads(manifest_bytes)["name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{uri}/{MANIFEST} is not an rnncodec manifest; give the URI of a prepared folder") from exc
    tag = hashlib.sha256(uri.encode() + manifest_bytes).hexdigest()[:12]
    local = Path(cache_dir or cache.default_cache_dir()).expanduser() / "remote" / f"{Path(name).name}-{tag}"

    def copy(tmp: Path) -> None:
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        shards = [s for entry in read_manifest(tmp)["splits"].values() for s in entry["shards"]]
        with progress_bar(f"copying {uri}", sum(s["bytes"] for s in shards)) as advance:
            for shard in shards:
                digest = hashlib.sha256()
                try:
                    with (
                        fs.open_input_stream(f"{root}/{shard['file']}") as stream,
                        open(tmp / shard["file"], "wb") as sink,
                    ):
                        while block := stream.read(1 << 24):
                            digest.update(block)
                            sink.write(block)
                            advance(len(block))
                except (OSError, pa.ArrowException) as exc:
                    raise DataError(
                        f"cannot copy {shard['file']} from {uri} ({exc}); check the URI and your credentials"
                    ) from exc
                if digest.hexdigest() != shard["sha256"]:
                    raise DataError(
                        f"{uri}/{shard['file']} does not match its manifest (sha256); "
                        "the remote copy is altered or truncated, prepare it again"
                    )

    cache.build_once(local, copy)
    return local
