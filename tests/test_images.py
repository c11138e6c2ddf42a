"""The image loading rule: 16-bit rounding, transparency, animations, bombs, EXIF orientation."""

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image, ImageFile

from rnncodec import data
from rnncodec.data.images import MAX_PIXELS, image_size, list_images, load_image

# 16-bit samples whose high byte (what Pillow keeps) is not their rounded 8-bit value v · 255 / 65535
DEEP = np.array([[0, 383, 511, 1000, 30_000, 40_000], [65_535, 65_400, 128, 257, 33_023, 52_000]], np.uint16)


def rounded(samples: np.ndarray) -> np.ndarray:
    return np.round(samples.astype(np.float64) * 255 / 65535).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray, **options) -> Path:
    """An H×W×C uint16 array (C: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) as a 16-bit PNG, through pypng."""
    height, width, planes = pixels.shape
    writer = png.Writer(width, height, greyscale=planes < 3, alpha=planes % 2 == 0, bitdepth=16, **options)
    with open(path, "wb") as out:
        writer.write(out, pixels.reshape(height, -1).tolist())
    return path


def refused(path: Path, match: str) -> str:
    with pytest.raises(data.DataError, match=match) as error:
        load_image(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    return str(error.value)


def test_the_samples_tell_rounding_from_truncation():
    assert (rounded(DEEP) != DEEP >> 8).sum() >= 4


@pytest.mark.parametrize("planes", [1, 2, 3, 4], ids=["grey", "grey+alpha", "rgb", "rgba"])
def test_16_bit_png_is_rounded_to_8_bits(tmp_path, planes):
    colour = np.stack([DEEP, DEEP[::-1], DEEP[:, ::-1]], axis=2)[:, :, : 1 if planes < 3 else 3]
    alpha = np.full((*DEEP.shape, 1 - planes % 2), 65535, np.uint16)
    loaded = load_image(write_png(tmp_path / "deep.png", np.concatenate([colour, alpha], axis=2)))
    assert loaded.dtype == np.uint8 and loaded.shape == (*DEEP.shape, 3)
    assert np.array_equal(loaded, np.broadcast_to(rounded(colour), loaded.shape))


def test_16_bit_png_with_fewer_significant_bits_keeps_its_scale(tmp_path):
    twelve = DEEP >> 4  # pypng stores 12-bit samples as 16-bit ones (scaled up) with an sBIT chunk
    path = tmp_path / "twelve.png"
    with open(path, "wb") as out:
        png.Writer(6, 2, greyscale=False, bitdepth=12).write(out, np.repeat(twelve, 3, axis=1).tolist())
    stored = np.round(twelve.astype(np.float64) * 65535 / 4095)
    assert np.abs(load_image(path)[:, :, 0].astype(int) - rounded(stored)).max() <= 1


def test_16_bit_pgm_is_rounded_not_taken_for_8_bits(tmp_path):
    dark = np.array([[0, 100, 200, 255], [1, 128, 129, 250]], np.uint16)  # all of it below 1/256 of full scale
    path = tmp_path / "dark.pgm"
    path.write_bytes(b"P5 4 2 65535\n" + dark.astype(">u2").tobytes())
    assert np.array_equal(load_image(path), np.repeat(rounded(dark)[:, :, None], 3, axis=2))
    assert load_image(path).max() == 1


@pytest.mark.parametrize("alpha", [0, 65_534])
def test_16_bit_rgba_with_a_transparent_pixel_is_refused(tmp_path, alpha):
    pixels = np.concatenate([np.stack([DEEP] * 3, axis=2), np.full((*DEEP.shape, 1), 65535, np.uint16)], axis=2)
    pixels[1, 2, 3] = alpha
    refused(write_png(tmp_path / "clear.png", pixels), "transparent pixels")


@pytest.mark.parametrize("planes", [1, 3], ids=["grey", "rgb"])
def test_16_bit_transparent_colour_is_refused_when_used(tmp_path, planes):
    pixels = np.stack([DEEP] * planes, axis=2)
    key = (int(DEEP[0, 3]),) * planes
    refused(write_png(tmp_path / "keyed.png", pixels, transparent=key), "transparent pixels")
    assert load_image(write_png(tmp_path / "unused.png", pixels, transparent=(7,) * planes)).shape == (2, 6, 3)


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_8_bit_transparent_colour_or_palette_entry_is_refused_when_used(tmp_path, mode):
    image = Image.new(mode, (8, 4), 3 if mode != "RGB" else (3, 3, 3))
    if mode == "P":
        image.putpalette([i % 256 for i in range(768)])
    key = 3 if mode != "RGB" else (3, 3, 3)
    image.save(tmp_path / "keyed.png", transparency=key)
    refused(tmp_path / "keyed.png", "transparent pixels")
    image.save(tmp_path / "unused.png", transparency=9 if mode != "RGB" else (9, 9, 9))
    assert load_image(tmp_path / "unused.png").shape == (4, 8, 3)


def test_animated_gif_is_refused(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    assert "2 frames" in refused(tmp_path / "moving.gif", "frames")


def write_bomb_png(path: Path, side: int = 11_000) -> Path:
    """A single-colour grey ``side``×``side`` PNG (about 100 KB; 121 megapixels decoded)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    packer, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0, then black
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    bomb = write_bomb_png(tmp_path / "photos" / "bomb.png")
    assert bomb.stat().st_size < 1 << 20 and 11_000**2 > MAX_PIXELS
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    refused(bomb, "pixels")
    with pytest.raises(data.DataError, match="pixels"):
        image_size(bomb)
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="bomb.png.*pixels") as error:
        data.prepare(f"folder:{tmp_path / 'photos'}", cache_dir=cache)
    assert "\n" not in str(error.value)
    assert not cache.exists() or [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def quadrants() -> np.ndarray:
    """A 32×48 (H×W) RGB image of flat blocks, so that JPEG keeps every turn recognisable."""
    image = np.zeros((32, 48, 3), np.uint8)
    image[:16, :24], image[:16, 24:], image[16:, :24], image[16:, 24:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), 250
    return image


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: viewers show it turned 90° clockwise
    Image.fromarray(quadrants()).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    stored = np.asarray(Image.open(tmp_path / "turned.jpg").convert("RGB"))
    loaded = load_image(tmp_path / "turned.jpg")
    assert loaded.shape == (48, 32, 3) and np.array_equal(loaded, np.rot90(stored, -1))
    assert np.abs(loaded[2, -3].astype(int) - (250, 0, 0)).max() < 20  # the red corner is now top right


def test_16_bit_png_exif_orientation_is_applied(tmp_path):
    pixels = quadrants().astype(np.uint16) * 257
    plain = write_png(tmp_path / "plain.png", pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    chunks = list(png.Reader(filename=str(plain)).chunks())
    chunks.insert(1, (b"eXIf", exif.tobytes()[6:]))  # after IHDR; a PNG's eXIf has no "Exif\0\0" prefix
    with open(tmp_path / "turned.png", "wb") as out:
        png.write_chunks(out, chunks)
    assert np.array_equal(load_image(tmp_path / "turned.png"), np.rot90(quadrants(), -1))


def test_damaged_16_bit_png_is_one_line(tmp_path):
    payload = bytearray(write_png(tmp_path / "deep.png", np.stack([DEEP] * 3, axis=2)).read_bytes())
    start = payload.index(b"IDAT")
    length = struct.unpack(">I", payload[start - 4 : start])[0]
    payload[start + 4] ^= 0xFF  # the zlib header, under a recomputed chunk CRC
    end = start + 4 + length
    payload[end : end + 4] = struct.pack(">I", zlib.crc32(payload[start:end]))
    (tmp_path / "deep.png").write_bytes(bytes(payload))
    refused(tmp_path / "deep.png", "not a readable PNG")


def test_a_file_that_is_not_an_image_is_one_line(tmp_path):
    (tmp_path / "notes.png").write_text("these are notes\nnot pixels\n")
    refused(tmp_path / "notes.png", "not a readable image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    refused(tmp_path / "empty.jpg", "not a readable image")


def test_an_image_folder_with_a_broken_link_or_pipe_is_refused_not_shrunk(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "album.png").mkdir()
    assert list_images(tmp_path) == [tmp_path / "a.png"]
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(data.DataError, match=r"b\.png is a broken link; remove it from"):
        list_images(tmp_path)
    (tmp_path / "b.png").unlink()
    os.mkfifo(tmp_path / "c.png")
    with pytest.raises(data.DataError, match=r"c\.png is not a regular file \(a device, pipe or socket\)"):
        list_images(tmp_path, recursive=True)


@pytest.mark.parametrize("offset, value", [(72, 0x0B)])
def test_a_malformed_tiff_is_refused_in_one_line_whatever_pillow_raises(tmp_path, offset, value):
    path = tmp_path / "s.tif"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    damaged = bytearray(path.read_bytes())
    damaged[offset] = value  # Pillow's TIFF plugin then raises TypeError, not OSError
    path.write_bytes(bytes(damaged))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        refused(path, "is not a readable image")


@pytest.mark.parametrize("mode", ["RGB", "P", "CMYK", "L", "RGBA", "YCbCr", "1"])
def test_images_are_converted_by_strips_exactly_as_whole(mode):
    """Strips of a few rows, the last one short, give Pillow's whole-image conversion to the byte."""
    from rnncodec.data.images import _rgb_by_strips

    rgb = np.random.default_rng(1).integers(0, 256, (37, 29, 3), np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    whole = np.asarray(img.convert("RGB"))
    for strip_pixels in (1, 29 * 5, 29 * 37, 1 << 20):
        assert np.array_equal(_rgb_by_strips(img, strip_pixels), whole)
