"""Preparing shards: rotations, subsets, the keyed cache, concurrent builders, damaged shards."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rnncodec import data
from rnncodec.data import reader
from rnncodec.data.files import FileError, file_digest
from rnncodec.data.shards import IMAGE_BYTES, MANIFEST, SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_shards_are_uncompressed_arrow_files_with_the_schema(tmp_path):
    folder = data.prepare("sample", cache_dir=tmp_path, rows_per_shard=1000)
    entry = manifest(folder)["splits"]["train"]
    assert len(entry["shards"]) == -(-entry["rows"] // 1000) and all(s["rows"] <= 1000 for s in entry["shards"])
    with pa.memory_map(str(folder / entry["shards"][0]["file"])) as source:
        reader = pa.ipc.open_file(source)
        assert reader.schema.equals(SCHEMA) and reader.schema.field("pixels").type.byte_width == IMAGE_BYTES
        assert reader.num_record_batches == 1
        allocated = pa.total_allocated_bytes()
        batch = reader.get_batch(0)
        assert pa.total_allocated_bytes() == allocated  # uncompressed: read in place from the map
        assert batch.num_rows == entry["shards"][0]["rows"]
    assert {"numpy", "pyarrow", "python"} <= set(manifest(folder)["versions"])
    assert manifest(folder)["params"]["rotations"] == 1


def test_rotations_are_true_quarter_turns(tmp_path):
    once = data.prepare("sample", cache_dir=tmp_path)
    four = data.prepare("sample", cache_dir=tmp_path, rotations=4)
    with data.open_split(once) as base, data.open_split(four) as turned:
        assert len(turned) == 4 * len(base)
        keys = list(zip(base.column("source"), base.column("index")))
        where = {key: row for row, key in enumerate(keys)}
        rows = np.arange(len(turned))[:: max(1, len(turned) // 500)]
        originals = base.images(
            [where[(s, i)] for s, i in zip(turned.column("source")[rows], turned.column("index")[rows])]
        )
        for image, original, turns in zip(turned.images(rows), originals, turned.column("rotation")[rows]):
            assert np.array_equal(image, np.rot90(original, turns, axes=(1, 2)))
        assert np.bincount(turned.column("rotation")).tolist() == [len(base)] * 4
        assert np.array_equal(np.rot90(originals[0], 1, axes=(1, 2))[:, 0, :], originals[0][:, :, -1])  # CCW


def rows_of(folder: Path) -> set:
    with data.open_split(folder) as reader:
        return set(zip(reader.column("source"), reader.column("index"), reader.column("rotation")))


def test_subsets_are_deterministic_per_seed(tmp_path):
    first = data.prepare("sample", cache_dir=tmp_path / "a", rotations=2, size=1500, seed=7)
    again = data.prepare("sample", cache_dir=tmp_path / "b", rotations=2, size=1500, seed=7)
    other = data.prepare("sample", cache_dir=tmp_path / "a", rotations=2, size=1500, seed=8)
    everything = data.prepare("sample", cache_dir=tmp_path / "a", rotations=2)
    shas = [[s["sha256"] for s in manifest(f)["splits"]["train"]["shards"]] for f in (first, again, other)]
    assert shas[0] == shas[1] != shas[2]
    assert len(rows_of(first)) == 1500 and rows_of(first) != rows_of(other)
    assert rows_of(first) <= rows_of(everything)
    assert manifest(first)["splits"]["val"] == manifest(everything)["splits"]["val"]
    with pytest.raises(data.DataError, match="--size 99999 exceeds"):
        data.prepare("sample", cache_dir=tmp_path / "a", size=99_999)
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


def test_same_parameters_share_one_folder(tmp_path):
    folder = data.prepare("sample", cache_dir=tmp_path, rotations=2)
    created = manifest(folder)["created"]
    assert data.prepare("sample", cache_dir=tmp_path, rotations=2, seed=5) == folder  # seed is moot without size
    assert manifest(folder)["created"] == created
    assert data.prepare("sample", cache_dir=tmp_path, rotations=2, size=100) != folder
    assert data.prepare("sample", cache_dir=tmp_path, rotations=2, hard_patches=4) != folder


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNCODEC_CACHE", str(tmp_path / "env-cache"))
    assert data.prepare("sample").parent == tmp_path / "env-cache"


def test_out_folder_refuses_other_parameters_unless_forced(tmp_path):
    out = tmp_path / "mine"
    assert data.prepare("sample", out=out, cache_dir=tmp_path) == out
    with pytest.raises(data.DataError, match="--force"):
        data.prepare("sample", out=out, cache_dir=tmp_path, rotations=2)
    assert data.prepare("sample", out=out, cache_dir=tmp_path, rotations=2, force=True) == out
    assert manifest(out)["params"]["rotations"] == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(data.DataError, match="not a prepared dataset"):
        data.prepare("sample", out=tmp_path / "junk")


def test_bad_parameters_fail_before_any_work(tmp_path):
    for kwargs, message in [
        ({"rotations": 5}, "--rotations 5"),
        ({"size": 0}, "--size 0"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"root": tmp_path}, "--root applies to CIFAR"),
        ({"size": 2, "seed": -5}, "--seed -5 must be in 0..4294967295"),
    ]:
        with pytest.raises(data.DataError, match=message):
            data.prepare("sample", cache_dir=tmp_path / "cache", **kwargs)
    with pytest.raises(data.DataError, match="unknown source 'imagenet'"):
        data.prepare("imagenet", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_cache_or_out_folder_that_cannot_be_made_is_a_one_line_error_not_a_hang(tmp_path):
    (tmp_path / "afile").write_text("x")
    for kwargs in ({"cache_dir": tmp_path / "afile"}, {"out": tmp_path / "afile" / "sub"}):
        with pytest.raises(FileError, match=f"{tmp_path / 'afile'} is a file, not a folder; choose a folder"):
            data.prepare("sample", **kwargs)
    if Path("/proc/self").is_dir():  # where nothing can be created, even by root: FileLock alone would wait forever
        with pytest.raises(FileError, match="cannot write in /proc .*choose a folder you can write to"):
            data.prepare("sample", out="/proc/rnncodec-out", cache_dir=tmp_path)


def damage(path: Path, truncate: bool) -> None:
    payload = bytearray(path.read_bytes())
    if truncate:
        del payload[len(payload) // 2 :]
    else:
        payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize("truncate", [False, True])
def test_damaged_shard_is_refused_with_a_clear_message(tmp_path, truncate):
    folder = data.prepare("sample", cache_dir=tmp_path, rows_per_shard=2000)
    damage(folder / "train-00001.arrow", truncate)
    word = "truncated" if truncate else "altered"
    with pytest.raises(data.DataError, match=f"train-00001.arrow is {word}") as error:
        data.open_split(folder)
    assert "prepare" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(data.DataError, match=word):
        data.prepare("sample", cache_dir=tmp_path, rows_per_shard=2000)
    assert len(data.open_split(folder, "val")) > 0  # the other split is intact
    assert data.prepare("sample", cache_dir=tmp_path, rows_per_shard=2000, force=True) == folder
    assert len(data.open_split(folder)) == manifest(folder)["splits"]["train"]["rows"]


def test_damaged_manifest_is_refused(tmp_path):
    folder = data.prepare("sample", cache_dir=tmp_path)
    (folder / MANIFEST).write_text("{ not json")
    with pytest.raises(data.DataError, match="manifest.json is unreadable"):
        data.open_split(folder)
    with pytest.raises(data.DataError, match="not a prepared dataset"):
        data.open_split(tmp_path)


PREPARE = """
import sys
from rnncodec import data
print(data.prepare("sample", rotations=4, cache_dir=sys.argv[1]))
"""


def test_two_processes_preparing_one_key_build_one_cache(tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [folder]
    assert len(data.open_split(folder)) == manifest(folder)["splits"]["train"]["rows"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small prepared folder: three training shards and one validation shard."""
    return data.prepare("sample", hard_patches=16, rows_per_shard=50, cache_dir=tmp_path_factory.mktemp("small"))


def tree(root: Path) -> dict:
    """Every path under ``root`` with its size and modification time."""
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


HOSTILE = ["/etc/hostname", "OUTSIDE", "../outside.arrow", "sub/train.arrow", ".hidden.arrow", "a\\b.arrow", "..", ""]


@pytest.mark.parametrize("name", HOSTILE)
def test_manifest_naming_files_outside_its_folder_is_refused_unread(small, tmp_path, monkeypatch, name):
    folder = tmp_path / "prepared"
    shutil.copytree(small, folder)
    shard = folder / "train-00000.arrow"
    for copy in (tmp_path / "outside.arrow", folder / "sub" / "train.arrow", folder / ".hidden.arrow"):
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(shard, copy)  # a valid shard wherever the name leads: only the name check refuses it
    name = str(tmp_path / "outside.arrow") if name == "OUTSIDE" else name
    target = Path(name) if name.startswith("/") else folder / name
    if not target.is_file():
        target = shard
    payload = manifest(folder)
    entry = {**payload["splits"]["train"]["shards"][0], "file": name, "bytes": target.stat().st_size,
             "sha256": file_digest(target)}
    payload["splits"]["train"] = {"rows": entry["rows"], "shards": [entry]}
    (folder / MANIFEST).write_text(json.dumps(payload))
    before = tree(tmp_path)
    monkeypatch.setattr(reader, "verify", lambda *args, **kwargs: pytest.fail("a shard was read"))
    with pytest.raises(data.DataError, match="not a plain file name") as error:
        data.open_split(folder)
    assert "\n" not in str(error.value) and str(folder / MANIFEST) in str(error.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["../x", "/tmp", ".x", "a/b", "x\ud800y", "é" * 121])
def test_manifest_name_must_be_a_plain_file_name(small, tmp_path, name):
    folder = tmp_path / "prepared"
    shutil.copytree(small, folder)
    payload = manifest(folder)
    payload["name"] = name
    (folder / MANIFEST).write_text(json.dumps(payload))
    with pytest.raises(data.DataError) as error:
        data.open_split(folder)
    assert "\n" not in str(error.value) and str(error.value).encode()


JUNK = [None, True, False, -1, 0, 1.5, 2**50, 2**64, 10**400, 1e308, float("inf"), float("nan"), "", "x" * 300,
        "manifest.json", "val-00000.arrow", "../x", "0" * 64, [], {}, [[[[]]]], {"file": {"rows": [None]}},
        {"rows": 1, "shards": [{"file": "train-00000.arrow"}]}]
RAW_JUNK = [b"\x00", b"\xff\xfe", b'"', b"\\", b"[" * 100_000, b"{" * 100_000, b"\xed\xa0\x80", b",,", b"1e99999"]


def nodes(value: object, path: tuple = ()) -> list[tuple]:
    """The paths of every node below the root of a JSON value."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for key, child in children for p in [(*path, key), *nodes(child, (*path, key))]]


def mutate(payload: dict, rng: random.Random) -> bytes:
    """One random damage to a manifest: a key deleted, a value swapped for junk or a huge number, a node
    nested in junk or moved, or the bytes truncated, flipped or spliced."""
    payload = json.loads(json.dumps(payload))
    paths = nodes(payload)
    path = rng.choice(paths)
    parent = payload
    for key in path[:-1]:
        parent = parent[key]
    kind = rng.randrange(8)
    if kind == 0:
        del parent[path[-1]]
    elif kind == 1:
        parent[path[-1]] = rng.choice(JUNK)
    elif kind == 2:
        parent[path[-1]] = rng.choice([2**31, 2**53 + 1, 10**30, -(2**63), 1e300, -1e-300])
    elif kind == 3:
        parent[path[-1]] = [parent[path[-1]], {"junk": parent[path[-1]]}]
    elif kind == 4:
        parent[path[-1]] = json.loads(json.dumps(payload))["splits"]  # a node moved elsewhere
    raw = json.dumps(payload).encode()
    if kind == 5:
        return raw[: rng.randrange(len(raw))]
    if kind == 6:
        raw = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 7:
        at = rng.randrange(len(raw))
        return raw[:at] + rng.choice(RAW_JUNK) + raw[at:]
    return raw


def test_fuzzed_manifests_open_correctly_or_fail_in_one_line(small, tmp_path):
    folder = tmp_path / "prepared"
    shutil.copytree(small, folder)
    original, rng, outcomes = manifest(folder), random.Random(1234), {"opened": 0, "refused": 0}
    for case in range(300):
        raw = mutate(original, rng)
        (folder / MANIFEST).write_bytes(raw)
        location = folder.as_uri() if case % 10 == 0 else folder  # some through the remote copy
        for split in ("train", "val"):
            try:
                with data.open_split(location, split, cache_dir=tmp_path / "cache") as opened:
                    assert len(opened) == json.loads(raw)["splits"][split]["rows"], (case, raw[:300])
                    if len(opened):
                        assert opened.images([0, len(opened) - 1]).shape == (2, 3, 32, 32)
                outcomes["opened"] += 1
            except data.DataError as exc:
                assert "\n" not in str(exc) and len(str(exc)) < 1000, (case, raw[:300])
                outcomes["refused"] += 1
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {case}: {type(exc).__name__}: {exc} for manifest {raw[:300]!r}")
    assert outcomes["opened"] > 20 and outcomes["refused"] > 200, outcomes
