"""What a sweep keeps in its folder (``STORAGE/NAME``, a local folder or a pyarrow URI): ``sweep.json``,
per trial the ``checkpoint_*`` folders holding ``state.pt`` and ``meta.json`` and, on remote storage,
the prepared data under ``data/`` (so nodes that share no disk read the same shards). Reading and
writing them, on any pyarrow filesystem, is done here only."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import pickletools
import re
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from rnncodec.data.errors import RnncodecError
from rnncodec.data.files import write_atomic
from rnncodec.data.remote import is_uri, open_filesystem
from rnncodec.sweeps.spec import Sweep, SweepError

SWEEP_FILE = "sweep.json"
TRIALS_FILE = "trials.json"  # the trials' states, written by the driver (trial_status.StatusWriter)
DATA_FOLDER = "data"  # the prepared data, published into a sweep folder on remote storage
STATE_FILE = "state.pt"
META_FILE = "meta.json"
TRIAL_FORMAT = "rnncodec-trial"
TRIAL_VERSION = 2
_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (``s3://…``, ``gs://…``, ``file://…``),
    tried once with a time limit."""
    try:
        return open_filesystem(location)
    except RnncodecError as exc:
        raise SweepError(str(exc)) from None


def child(location: str, name: str) -> str:
    """``location/name`` for a folder or a URI, keeping a URI's options after the path
    (``s3://bucket/sweeps?endpoint_override=host:port`` → ``s3://bucket/sweeps/name?endpoint_override=host:port``)."""
    if not is_uri(location):
        return str(Path(location).expanduser().resolve() / name)
    path, mark, options = location.partition("?")
    return f"{path.rstrip('/')}/{name}{mark}{options}"


def parent(location: str) -> str:
    """The folder or URI holding ``location`` (its options kept), the inverse of :func:`child`."""
    if not is_uri(location):
        return str(Path(location).expanduser().resolve().parent)
    path, mark, options = location.partition("?")
    return f"{path.rstrip('/').rsplit('/', 1)[0]}{mark}{options}"


class _RenamedWhenClosed:
    """A binary file written under a temporary name beside ``path`` and renamed to it by ``close``; a
    writer that dies or fails before closing leaves ``path`` as it was."""

    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, f"{path}.partial-{secrets.token_hex(4)}"
        self.closed = True  # until the file is open, nothing to clean up
        self.file = open(self.tmp, "xb")  # noqa: SIM115 - closed by close() or __del__
        self.closed = False

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)

    def __del__(self) -> None:
        if not self.closed:  # abandoned mid-copy: the partial file goes, ``path`` stays as it was
            self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


class AtomicLocalFiles(pafs.FileSystemHandler):
    """The local filesystem, with every file written under a temporary name and renamed when complete.

    Tune copies its experiment state and each trial's checkpoints into the storage folder file by file;
    on a local disk a driver killed mid-copy would leave a file cut short that the next resume cannot
    read. Object stores (S3, GCS) write whole objects and need no such care."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalFiles)

    def __hash__(self) -> int:
        return hash(AtomicLocalFiles)

    def get_type_name(self) -> str:
        return "rnncodec-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the root folder")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 24):
                target.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_RenamedWhenClosed(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.fs.open_append_stream(path)


def tune_storage(location: str) -> tuple[str, pafs.FileSystem | None]:
    """The ``storage_path`` and ``storage_filesystem`` Tune is given for the sweep folder ``location``:
    on a local disk the path and :class:`AtomicLocalFiles`, elsewhere the parent URI and None (Tune
    opens it)."""
    fs, path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return str(Path(path).parent), pafs.PyFileSystem(AtomicLocalFiles())
    return parent(location), None


_TUNE_STATE = "experiment_state-*.json"
_GRID_STATE = "basic-variant-state-*.json"
_SEARCH_STATES = (_GRID_STATE, "search_gen_state-*.json", "searcher-state-*.pkl")  # pickles despite ".json"


def _whole_pickle(raw: bytes) -> bool:
    """Whether ``raw`` is exactly one complete pickle; its opcodes are walked, nothing is loaded."""
    stream = io.BytesIO(raw)
    try:
        for _ in pickletools.genops(stream):
            pass
    except Exception:  # noqa: BLE001 - any parse failure means damaged
        return False
    return stream.tell() == len(raw)


def check_tune_state(location: str, trials: int, say: Callable[[str], None]) -> None:
    """Check Tune's own files in a sweep folder before a resume (parsed, never unpickled): Tune, meeting
    one cut short, would restart the sweep with no trials. A grid's search state whose ``trials`` all
    exist already holds nothing more and is set aside (renamed ``*.damaged``); any other damage is a
    SweepError. Sweeps written since :class:`AtomicLocalFiles` should never show any."""
    fs, path = filesystem(location)
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
             if i.type != pafs.FileType.Directory]  # a pipe or device is damage too, not a file to skip
    states = fnmatch.filter(names, _TUNE_STATE)
    if not states:
        return  # Tune says so itself, and build_tuner turns that into a SweepError

    def damaged(name: str) -> SweepError:
        return SweepError(f"Tune's {location}/{name} is cut short or damaged (a driver killed while copying it); "
                          "the sweep cannot be resumed: run it again with `rnncodec sweep run` and a new --name")

    try:
        created = len(read_json(fs, f"{path}/{max(states)}")["trial_data"])
    except Exception:  # noqa: BLE001 - unreadable in any way means damaged
        raise damaged(max(states)) from None
    for pattern in _SEARCH_STATES:
        for name in fnmatch.filter(names, pattern):
            if fs.get_file_info(f"{path}/{name}").type != pafs.FileType.File:
                raise damaged(name)
            with fs.open_input_stream(f"{path}/{name}") as f:
                if _whole_pickle(f.readall()):
                    continue
            if pattern != _GRID_STATE or created < trials:
                raise damaged(name)
            fs.move(f"{path}/{name}", f"{path}/{name}.damaged")
            say(f"note: {name} was cut short by a killed driver; set aside, as all {trials} trials exist already")


MAX_JSON_BYTES = 256 << 20  # Tune's experiment state of a large sweep is a few MB


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """A JSON file of a sweep folder. FileNotFoundError when absent; ValueError when it is not a regular
    file (a pipe or device, which a read could wait on or never finish) or larger than MAX_JSON_BYTES."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type != pafs.FileType.File:
        raise ValueError("not a regular file")
    with fs.open_input_stream(path) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def write_bytes(fs: pafs.FileSystem, path: str, body: bytes) -> None:
    """Write a whole file: atomically on a local disk; object stores write whole objects anyway."""
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomic(path, body)
    else:
        with fs.open_output_stream(path) as f:
            f.write(body)


def check_writable(location: str) -> None:
    """Write a probe file into the sweep folder (and remove it, with the folders made for it), so a bad
    ``--storage`` fails before any work."""
    fs, path = filesystem(location)
    probe = f"{path}/.rnncodec-write-test"
    made = []
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            missing = Path(path)
            while not missing.exists() and missing != missing.parent:
                made.append(missing)
                missing = missing.parent
        fs.create_dir(path, recursive=True)
        write_bytes(fs, probe, b"")
        fs.delete_file(probe)
        for folder in made:
            folder.rmdir()
    except (OSError, RnncodecError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SweepError(f"storage {location} is not writable ({first}); give --storage a folder or URI you "
                         "can write to") from None


def read_sweep_file(location: str) -> dict[str, Any]:
    """``sweep.json`` of a sweep folder, with its spec parsed as ``sweep``; SweepError when the folder is
    no sweep or the file is damaged."""
    fs, path = filesystem(location)
    try:
        stored = read_json(fs, f"{path}/{SWEEP_FILE}")
    except (FileNotFoundError, OSError):
        raise SweepError(f"{location} is not a sweep folder (no {SWEEP_FILE}); give the STORAGE/NAME folder "
                         "that `rnncodec sweep run` printed") from None
    except (ValueError, RecursionError) as exc:
        raise SweepError(f"{location}/{SWEEP_FILE} is damaged ({exc}); the sweep cannot be resumed") from None
    if (not isinstance(stored, dict) or not isinstance(stored.get("spec"), dict)
            or not isinstance(stored.get("context"), dict) or not isinstance(stored["context"].get("data"), str)):
        raise SweepError(f"{location}/{SWEEP_FILE} is damaged (no spec, context or data location); "
                         "the sweep cannot be resumed")
    try:
        stored["sweep"] = Sweep.from_dict(stored["spec"])
    except SweepError as exc:
        raise SweepError(f"{location}/{SWEEP_FILE} holds a sweep this version refuses ({exc}); "
                         "run it again with `rnncodec sweep run`") from None
    return stored


def write_sweep_file(location: str, content: dict[str, Any]) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    write_bytes(fs, f"{path}/{SWEEP_FILE}", json.dumps(content, indent=2, sort_keys=True).encode())


def validations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every validation of a trial's history, in order: each epoch's ``probes`` (``val_probes``), then
    the epoch end itself."""
    return [v for h in history for v in [*h.get("probes", []), h]]


def checkpoint_index(folder: str) -> int:
    """The number in ``checkpoint_000012`` (Tune counts its checkpoints of a trial from 0), or -1."""
    m = _CHECKPOINT.fullmatch(folder.rstrip("/").rsplit("/", 1)[-1])
    return int(m[1]) if m else -1


PLAIN = (str, int, float, bool, type(None))
_COUNT_LIMIT = 10**15  # steps, images, bytes: far above any real run, small enough for float arithmetic


def _whole(value: Any, lo: int, hi: int = _COUNT_LIMIT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def meta_problem(meta: Any) -> str | None:
    """What is wrong with a checkpoint's meta.json as rnncodec writes it, or None: the fields that
    resume, status and report compute with must have their types and sane ranges."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    if not _whole(meta.get("epoch"), 0, 10**6):
        return "epoch is not a whole number in 0..1000000"
    for key in ("report", "state_bytes"):
        if key in meta and not _whole(meta[key], 0):
            return f"{key} is not a whole number"
    params = meta.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, PLAIN) for v in params.values()):
        return "params is not a mapping of plain values"
    if meta.get("repeat") is not None and not _whole(meta["repeat"], 0):
        return "repeat is not a whole number"
    history = meta.get("history", [])
    if not isinstance(history, list):
        return "history is not a list"
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not _whole(entry.get("epoch"), 1, 10**6) or not _whole(entry.get("steps"), 0):
            return f"history[{i}] lacks a whole epoch and step count"
        for key, value in entry.items():
            if key == "probes":
                if not isinstance(value, list) or not all(
                        isinstance(p, dict) and _whole(p.get("steps"), 0)
                        and all(isinstance(v, (int, float, type(None))) for v in p.values()) for p in value):
                    return f"history[{i}].probes is not a list of step-counted numbers"
                continue
            numeric = key.endswith(("_time", "_at")) or key == "samples_seen"
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) if numeric
                    else isinstance(value, PLAIN)):
                return f"history[{i}].{key} is a {type(value).__name__}, not a {'number' if numeric else 'plain value'}"
    return None


def checkpoints(fs: pafs.FileSystem, trial_dir: str) -> list[tuple[int, str, dict[str, Any] | None, str | None]]:
    """``(epoch, folder, meta, problem)`` of the trial's checkpoint folders, newest epoch first. ``meta``
    is the folder's meta.json, or None (and the epoch -1) when it cannot be used: ``problem`` then says
    why."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    except (OSError, ValueError):
        return []
    found = []
    for info in infos:
        if info.type != pafs.FileType.Directory or checkpoint_index(info.path) < 0:
            continue
        meta, problem = None, None
        try:
            meta = read_json(fs, f"{info.path}/{META_FILE}")
            problem = meta_problem(meta)
        except FileNotFoundError:
            problem = "absent (a copy under way, or one cut short)"
        except Exception as exc:  # noqa: BLE001 - any damage means: unknown, tried last
            problem = f"unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
        if problem is not None:
            meta = None
        found.append((meta["epoch"] if meta else -1, info.path, meta, problem and f"{META_FILE} {problem}"))
    return sorted(found, key=lambda t: (t[0], checkpoint_index(t[1])), reverse=True)


def is_complete(fs: pafs.FileSystem, folder: str, meta: dict[str, Any]) -> bool:
    """Whether the state file has the size meta.json recorded: a copy into storage cut short by a
    killed driver leaves meta.json whole but the state file short."""
    return "state_bytes" not in meta or fs.get_file_info(f"{folder}/{STATE_FILE}").size == meta["state_bytes"]


def read_state(fs: pafs.FileSystem, folder: str, key: str | None = None) -> dict[str, Any]:
    """The trial state in checkpoint ``folder`` (loaded with ``weights_only=True``); SweepError saying
    why when it cannot be used."""
    import torch

    try:
        if fs.get_file_info(f"{folder}/{STATE_FILE}").type != pafs.FileType.File:
            raise ValueError(f"{STATE_FILE} is missing or not a regular file")
        with fs.open_input_stream(f"{folder}/{STATE_FILE}") as f:
            raw = f.readall()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged bytes fail torch.load in a dozen ways: all mean unreadable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SweepError(f"checkpoint {folder} is unreadable ({first})") from None
    if not isinstance(state, dict) or state.get("format") != TRIAL_FORMAT or state.get("version") != TRIAL_VERSION:
        raise SweepError(f"checkpoint {folder} is not an rnncodec trial checkpoint of version {TRIAL_VERSION}")
    if key is not None and state.get("trial_key") != key:
        raise SweepError(f"checkpoint {folder} belongs to another trial ({state.get('trial_key')}, not {key})")
    return state
