"""Bitstreams: exact round trips, progressive prefixes, odd sizes, and clean failures."""

import numpy as np
import pytest
import torch
from PIL import Image

from rnncodec.codec import CodecConfig, CodecError, RNNCodec, compress, decompress, decompress_progressive
from rnncodec.codec.bitstream import HEADER_BYTES, parse_header
from rnncodec.codec.image import pad_to_stride, to_input, to_pixels
from rnncodec.data.errors import RnncodecError
from rnncodec.data.images import load_image

MODES = ("one-shot", "additive", "residual-scaling")


def _model(mode: str = "additive", cell: str = "lstm", seed: int = 0) -> RNNCodec:
    torch.manual_seed(seed)
    return RNNCodec(CodecConfig(cell=cell, mode=mode, width=0.125)).eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 3 + xx, xx * 2, 255 - yy], axis=-1) % 256
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _reference(model: RNNCodec, image: np.ndarray, iterations: int) -> list[np.ndarray]:
    """The model's evaluation-mode reconstructions, computed without any bitstream."""
    x = pad_to_stride(to_input(torch.from_numpy(image).permute(2, 0, 1)[None]))
    with torch.no_grad():
        out = model(x, iterations)
    h, w = image.shape[:2]
    return [to_pixels(x_hat[0]).permute(1, 2, 0).numpy()[:h, :w] for x_hat in out["x_hat"]]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", MODES)
def test_decompress_equals_evaluation_reconstruction_bit_for_bit_for_every_prefix(mode, cell):
    model = _model(mode, cell)
    image = _image(48, 64)
    data = compress(model, image, iterations=5)
    reference = _reference(model, image, 5)
    for k in range(1, 6):
        assert np.array_equal(decompress(model, data, iterations=k), reference[k - 1]), k
    progressive = decompress_progressive(model, data)
    assert all(np.array_equal(a, b) for a, b in zip(progressive, reference))


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (37, 53), (100, 31)])
def test_odd_sizes_decode_to_the_original_size_with_exact_bit_counts(size):
    model = _model()
    image = _image(*size)
    data = compress(model, image, iterations=3)
    header = parse_header(data)
    blocks = -(-size[0] // 16) * -(-size[1] // 16)
    assert (header.height, header.width, header.iterations) == (*size, 3)
    assert len(data) == HEADER_BYTES + 3 * (blocks * 32 // 8 + 4)  # 128 bits per 32×32, 4-byte CRC
    out = decompress(model, data)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    assert np.array_equal(out, _reference(model, image, 3)[-1])


def test_tiled_coding_decodes_consistently_and_matches_per_tile_reconstruction():
    model = _model("residual-scaling")
    image = _image(70, 100)
    data = compress(model, image, iterations=2, tile=32)
    assert parse_header(data).tile == 32
    out = decompress(model, data)
    assert out.shape == (70, 100, 3)
    tile = image[32:64, 64:96]
    assert np.array_equal(out[32:64, 64:96], _reference(model, tile, 2)[-1])


def test_a_file_cut_short_decodes_its_complete_prefix_and_refuses_more():
    model = _model()
    image = _image(32, 32)
    data = compress(model, image, iterations=4)
    step = (len(data) - HEADER_BYTES) // 4
    cut = data[: HEADER_BYTES + 2 * step + 3]
    with pytest.raises(CodecError, match=r"truncated: it holds 2 complete iterations of 4; decode at most 2"):
        decompress(model, cut)
    assert np.array_equal(decompress(model, cut, iterations=2), decompress(model, data, iterations=2))
    with pytest.raises(CodecError, match="truncated before its first iteration"):
        decompress(model, data[: HEADER_BYTES + 5])
    with pytest.raises(CodecError, match="shorter than the 29-byte header"):
        decompress(model, data[:10])


def test_corruption_and_foreign_data_fail_cleanly():
    model = _model()
    data = bytearray(compress(model, _image(32, 32), iterations=3))
    payload = bytearray(data)
    payload[HEADER_BYTES + 20 + 4 + 1] ^= 0x10  # inside iteration 2's codes
    with pytest.raises(CodecError, match="iteration 2 are corrupted.*iterations 1..1 are intact"):
        decompress(model, bytes(payload))
    header = bytearray(data)
    header[6] ^= 1  # height
    with pytest.raises(CodecError, match="header is corrupted"):
        decompress(model, bytes(header))
    with pytest.raises(CodecError, match="wrong magic"):
        decompress(model, b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(CodecError, match="trailing data"):
        decompress(model, bytes(data) + b"x")
    with pytest.raises(CodecError, match="ask for 1..3, not 4"):
        decompress(model, bytes(data), iterations=4)


def test_the_wrong_model_is_refused():
    data = compress(_model(seed=0), _image(32, 32), iterations=1)
    with pytest.raises(CodecError, match="written by model [0-9a-f]{16}, not by this one"):
        decompress(_model(seed=1), data)


def test_random_damage_never_escapes_as_anything_but_a_codec_error():
    model = _model()
    data = compress(model, _image(40, 40), iterations=2)
    rng = np.random.default_rng(0)
    for _ in range(300):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 4)):
            damaged[pos] = rng.integers(0, 256)
        damaged = bytes(damaged[: rng.integers(0, len(data) + 1)]) if rng.random() < 0.3 else bytes(damaged)
        try:
            out = decompress(model, damaged)
        except CodecError:
            continue
        assert damaged == data and out.shape == (40, 40, 3)


def test_bad_images_are_refused_with_a_clear_message():
    model = _model()
    with pytest.raises(CodecError, match="expected an H×W×3 uint8 RGB image"):
        compress(model, np.zeros((8, 8), dtype=np.uint8), 1)
    with pytest.raises(CodecError, match="iterations must be in 1..16"):
        compress(model, _image(8, 8), 0)


def test_input_rule_converts_greyscale_and_16_bit_and_refuses_transparency(tmp_path):
    grey = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    assert np.array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))
    deep = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.shape == (48, 64, 3)
    assert np.array_equal(loaded[:, :, 0], np.round(deep.astype(float) * 255 / 65535).astype(np.uint8))
    rgba = np.dstack([_image(16, 16), np.full((16, 16), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(load_image(tmp_path / "opaque.png"), rgba[:, :, :3])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    with pytest.raises(RnncodecError, match="transparent pixels"):
        load_image(tmp_path / "clear.png")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(RnncodecError, match="is not a readable image"):
        load_image(tmp_path / "fake.png")
    with pytest.raises(RnncodecError, match="no such image file"):
        load_image(tmp_path / "missing.png")
