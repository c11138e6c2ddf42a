"""Reading shards: batch gathers, the resumable epoch sampler, the torch loader, remote folders."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from rnncodec import data
from rnncodec.data.loader import BatchLoader
from rnncodec.data.reader import EpochSampler, ShardReader


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return data.prepare("sample", rotations=2, rows_per_shard=1000, cache_dir=tmp_path_factory.mktemp("cache"))


def arrow_pixels(folder) -> np.ndarray:
    manifest = json.loads((folder / "manifest.json").read_text())
    tables = [pa.ipc.open_file(str(folder / s["file"])).read_all() for s in manifest["splits"]["train"]["shards"]]
    pixels = pa.concat_tables(tables).column("pixels").to_pylist()
    return np.frombuffer(b"".join(pixels), np.uint8).reshape(-1, 3, 32, 32)


@pytest.mark.parametrize("max_mapped_bytes", [256 << 20, 1])
def test_batches_gather_the_right_rows_across_shards(prepared, max_mapped_bytes):
    expected = arrow_pixels(prepared)
    with data.open_split(prepared, max_mapped_bytes=max_mapped_bytes) as reader:
        assert len(reader.shard_rows) > 2 and len(reader) == len(expected)
        indices = np.random.default_rng(0).integers(0, len(reader), 300)
        indices[:3] = [0, 999, 1000]  # either side of a shard boundary
        for _ in range(3):  # again after the pages were dropped
            batch = reader.images(indices)
            assert batch.dtype == np.uint8 and batch.shape == (300, 3, 32, 32)
            assert np.array_equal(batch, expected[indices])
        assert reader.images([]).shape == (0, 3, 32, 32)
        with pytest.raises(IndexError):
            reader.images([len(reader)])


def test_unknown_split_and_column(prepared):
    with pytest.raises(data.DataError, match="no split 'test'"):
        data.open_split(prepared, "test")
    with data.open_split(prepared, verify_sha256=False) as reader, pytest.raises(data.DataError, match="images()"):
        reader.column("pixels")


def test_reader_refuses_a_file_that_is_not_a_shard(tmp_path):
    path = tmp_path / "other.arrow"
    table = pa.table({"x": [1, 2, 3]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(data.DataError, match="not an rnncodec shard"):
        ShardReader([path])


def test_each_epoch_is_a_seeded_permutation():
    sampler = EpochSampler(1000, 100, seed=3)
    epochs = [np.concatenate(list(sampler)) for _ in range(2)]
    assert all(sorted(e) == list(range(1000)) for e in epochs)
    assert not np.array_equal(*epochs)
    assert np.array_equal(np.concatenate(list(EpochSampler(1000, 100, seed=3))), epochs[0])
    assert not np.array_equal(np.concatenate(list(EpochSampler(1000, 100, seed=4))), epochs[0])
    assert sampler.state_dict() == {"epoch": 2, "position": 0, "seed": 3}


def test_drop_last_and_sequential_order():
    assert [len(b) for b in EpochSampler(250, 100)] == [100, 100]
    kept = list(EpochSampler(250, 100, shuffle=False, drop_last=False))
    assert [len(b) for b in kept] == [100, 100, 50] and np.array_equal(np.concatenate(kept), np.arange(250))
    with pytest.raises(data.DataError, match="fewer than one batch"):
        EpochSampler(50, 100)


def test_resuming_mid_epoch_continues_exactly():
    reference = EpochSampler(1000, 64, seed=9)
    expected = list(reference) + list(reference)
    sampler = EpochSampler(1000, 64, seed=9)
    seen = []
    for batch in sampler:
        seen.append(batch)
        if len(seen) == 5:
            break
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state == {"epoch": 0, "position": 320, "seed": 9}
    resumed = EpochSampler(1000, 64)
    resumed.load_state_dict(state)
    seen += list(resumed) + list(resumed)
    assert len(seen) == len(expected) and all(np.array_equal(a, b) for a, b in zip(seen, expected))
    with pytest.raises(data.DataError, match="does not fit"):
        resumed.load_state_dict({"epoch": 0, "position": 5000, "seed": 9})


def test_loader_yields_uint8_tensors_and_resumes(prepared):
    reader = data.open_split(prepared, verify_sha256=False)
    loader = BatchLoader(reader, 128, seed=1)
    iterator = iter(loader)
    first = [next(iterator) for _ in range(3)]
    assert all(b.dtype == torch.uint8 and b.shape == (128, 3, 32, 32) for b in first)
    state = loader.state_dict()
    rest = list(iterator)
    assert len(first) + len(rest) == len(loader) == len(reader) // 128
    resumed = list(BatchLoader(reader, 128, seed=1, state=state))
    assert all(torch.equal(a, b) for a, b in zip(rest, resumed))
    order = EpochSampler(len(reader), 128, seed=1).order(0)
    assert torch.equal(first[0], torch.from_numpy(reader.images(order[:128])))


def test_remote_uri_is_copied_once_and_verified(prepared, tmp_path):
    local = tmp_path / "local-cache"
    uri = prepared.as_uri()
    with data.open_split(uri, cache_dir=local) as remote:
        copy = data.resolve(uri, local)
        assert copy.parent == local / "remote" and copy != prepared
        assert np.array_equal(remote.images(np.arange(5)), data.open_split(prepared).images(np.arange(5)))
    stamp = (copy / "train-00000.arrow").stat().st_mtime_ns
    assert data.resolve(uri, local) == copy and (copy / "train-00000.arrow").stat().st_mtime_ns == stamp


def test_altered_remote_shard_leaves_no_copy(prepared, tmp_path):
    remote = tmp_path / "remote-folder"
    shutil.copytree(prepared, remote)
    path = remote / "train-00001.arrow"
    payload = bytearray(path.read_bytes())
    payload[-5000] ^= 1
    path.write_bytes(bytes(payload))
    with pytest.raises(data.DataError, match="train-00001.arrow does not match its manifest"):
        data.open_split(remote.as_uri(), cache_dir=tmp_path / "cache")
    left = list((tmp_path / "cache").rglob("*"))
    assert [p for p in left if p.is_dir() or not p.name.endswith(".lock")] == [tmp_path / "cache" / "remote"]
    with pytest.raises(data.DataError, match="cannot read"):
        data.open_split((tmp_path / "nowhere").as_uri(), cache_dir=tmp_path / "cache")


def tree(root) -> dict:
    """Every path under ``root`` with its size and modification time."""
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("field", ["file", "name"])
@pytest.mark.parametrize("target", ["../../evil", "ABSOLUTE"])
def test_remote_manifest_cannot_reach_outside_the_cache(prepared, tmp_path, field, target):
    remote = tmp_path / "store" / "prepared"
    shutil.copytree(prepared, remote)
    shutil.copyfile(remote / "train-00000.arrow", tmp_path / "evil")  # a valid shard where "../../evil" leads
    target = str(tmp_path / "planted") if target == "ABSOLUTE" else target
    manifest = json.loads((remote / "manifest.json").read_text())
    if field == "name":
        manifest["name"] = target
    else:
        manifest["splits"]["train"]["shards"][0]["file"] = target
    (remote / "manifest.json").write_text(json.dumps(manifest))
    cache = tmp_path / "deep" / "er" / "cache"
    before = tree(tmp_path)
    with pytest.raises(data.DataError, match="not a plain file name") as error:
        data.open_split(remote.as_uri(), cache_dir=cache)
    assert "\n" not in str(error.value)
    assert tree(tmp_path) == before and not (tmp_path / "deep").exists()
