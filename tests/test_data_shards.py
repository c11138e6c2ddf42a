"""Preparing shards: rotations, subsets, the keyed cache, concurrent builders, damaged shards."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rnncodec import data
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
    ]:
        with pytest.raises(data.DataError, match=message):
            data.prepare("sample", cache_dir=tmp_path / "cache", **kwargs)
    with pytest.raises(data.DataError, match="unknown source 'imagenet'"):
        data.prepare("imagenet", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


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
