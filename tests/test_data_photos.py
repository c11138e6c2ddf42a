"""Photo sources: tiling, hard patches, held-out photos, the built-in sample."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rnncodec import data
from rnncodec.data.photos import hardest, held_out_photos, sample_source, tile
from rnncodec.data.shards import read_manifest


def test_tiles_are_the_non_overlapping_32x32_blocks():
    image = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    patches = tile(image)
    assert patches.shape == (2 * 3, 3, 32, 32) and patches.dtype == np.uint8
    assert np.array_equal(patches[4].transpose(1, 2, 0), image[32:64, 32:64])


def test_hard_patches_are_those_png_compresses_worst():
    rng = np.random.default_rng(0)
    image = np.full((64, 128, 3), 120, np.uint8)
    image[0:32, 64:96] = rng.integers(0, 256, (32, 32, 3))  # tile 2
    image[32:64, 0:32] = rng.integers(0, 256, (32, 32, 3))  # tile 4
    image[32:64, 96:128] = rng.integers(100, 140, (32, 32, 3))  # tile 7: mild noise
    patches = tile(image)
    assert hardest(patches, 2).tolist() == [2, 4]
    assert hardest(patches, 3).tolist() == [2, 4, 7]
    assert hardest(patches, 99).tolist() == list(range(8))


def test_sample_images_are_rgb_photographs_from_skimage():
    images = dict(data.sample_images())
    assert {"astronaut", "coffee", "chelsea", "motorcycle_left"} <= set(images)
    for array in images.values():
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


def test_sample_validation_holds_out_whole_photos_and_the_stereo_pair_together():
    source = sample_source()
    val = {source.names[i] for i in source.members["val"]}
    train = {source.names[i] for i in source.members["train"]}
    assert val and train and not val & train
    assert ("motorcycle_left.png" in val) == ("motorcycle_right.png" in val)
    assert 0 < source.count("val") <= 0.1 * (source.count("train") + source.count("val"))


def write_photos(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for shape, name in [((96, 64), "a.png"), ((64, 64), "b.jpg"), ((40, 200), "sub/c.JPEG"), ((20, 20), "tiny.png")]:
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not a photo")


def test_folder_source_tiles_every_photo_and_keeps_val_apart(tmp_path):
    write_photos(tmp_path / "photos")
    folder = data.prepare("folder:" + str(tmp_path / "photos"), cache_dir=tmp_path / "cache", val_fraction=0.3)
    with data.open_split(folder) as train, data.open_split(folder, "val") as val:
        assert len(train) + len(val) == 6 + 4 + 6
        assert not set(train.column("source")) & set(val.column("source"))
        assert set(train.column("source")) | set(val.column("source")) == {"a.png", "b.jpg", "sub/c.JPEG"}
        last = len(train) - 1
        photo = np.asarray(Image.open(tmp_path / "photos" / train.column("source")[last]).convert("RGB"))
        assert np.array_equal(train.images([last])[0], tile(photo)[train.column("index")[last]])


def test_held_out_photos_are_read_back_from_where_they_were_prepared_and_only_from_there(tmp_path):
    write_photos(tmp_path / "photos")
    folder = data.prepare("folder:" + str(tmp_path / "photos"), cache_dir=tmp_path / "cache", val_fraction=0.3)
    manifest = read_manifest(folder)
    ((name, image),) = held_out_photos(manifest)
    assert name in manifest["source"]["photos"]["val"]
    assert np.array_equal(image, np.asarray(Image.open(tmp_path / "photos" / name).convert("RGB")))
    (tmp_path / "secret.png").write_bytes((tmp_path / "photos" / "a.png").read_bytes())
    manifest["source"]["photos"]["val"] = ["../secret.png", "gone.png"]
    assert held_out_photos(manifest) == []  # outside the prepared folder, or missing: skipped
    assert held_out_photos({"params": {"fingerprint": {"files": "cifar"}}}) == []
    for hostile in ({"params": []}, {"params": {"fingerprint": {"sample": 5}}, "source": {"photos": {"val": ["a"]}}},
                    {**manifest, "source": {"photos": {"val": 7}}}):
        assert held_out_photos(hostile) == []


def test_the_sample_sources_held_out_photo_is_the_scikit_image_file():
    source = sample_source()
    manifest = {"params": {"fingerprint": source.fingerprint}, "source": source.describe()}
    ((name, image),) = held_out_photos(manifest)
    assert image.shape[2] == 3 and name in {source.names[i] for i in source.members["val"]}
    manifest["params"]["fingerprint"]["sample"] = [[n, size + 1] for n, size in source.fingerprint["sample"]]
    assert held_out_photos(manifest) == []  # a photo of another size is not the one prepared


def test_folder_hard_patches_keep_k_per_photo(tmp_path):
    write_photos(tmp_path / "photos")
    folder = data.prepare(
        "folder:" + str(tmp_path / "photos"), cache_dir=tmp_path / "cache", hard_patches=2, val_fraction=0
    )
    with data.open_split(folder) as train:
        names, counts = np.unique(train.column("source"), return_counts=True)
    assert dict(zip(names, counts.tolist())) == {"a.png": 2, "b.jpg": 2, "sub/c.JPEG": 2}


def test_folder_errors_are_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="holds no images"):
        data.prepare(f"folder:{tmp_path / 'empty'}", cache_dir=tmp_path / "cache")
    with pytest.raises(data.DataError, match="does not exist"):
        data.prepare(f"folder:{tmp_path / 'nowhere'}", cache_dir=tmp_path / "cache")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(data.DataError, match="afile is a file, not a folder"):
        data.prepare(f"folder:{tmp_path / 'afile'}", cache_dir=tmp_path / "cache")
    (tmp_path / "bad").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "bad" / "broken.png")
    (tmp_path / "bad" / "garbage.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(data.DataError, match="garbage.png is not a readable image"):
        data.prepare(f"folder:{tmp_path / 'bad'}", cache_dir=tmp_path / "cache")
    (tmp_path / "bad" / "garbage.png").unlink()
    payload = (tmp_path / "bad" / "broken.png").read_bytes()
    (tmp_path / "bad" / "broken.png").write_bytes(payload[: len(payload) // 2])  # header fine, pixels cut
    with pytest.raises(data.DataError, match="broken.png is not a readable image") as error:
        data.prepare(f"folder:{tmp_path / 'bad'}", cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_file_name_that_is_not_utf8_is_named_not_a_traceback(tmp_path):
    (tmp_path / "photos").mkdir()
    try:
        path = Path(os.fsdecode(bytes(tmp_path / "photos") + b"/\xff\xfe.png"))
        Image.new("RGB", (64, 64)).save(path, format="PNG")
    except (OSError, UnicodeError):
        pytest.skip("this filesystem refuses names that are not UTF-8")
    with pytest.raises(data.DataError, match=r"the file name '\\udcff\\udcfe\.png' is not valid UTF-8; rename it"):
        data.prepare(f"folder:{tmp_path / 'photos'}", cache_dir=tmp_path / "cache")
