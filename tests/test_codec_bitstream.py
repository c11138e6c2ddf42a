"""Bitstreams: exact round trips, progressive prefixes, odd sizes, tile batches, bounded memory,
and clean failures on damaged or crafted files."""

import itertools
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from rnncodec.codec import (
    CodecConfig,
    CodecError,
    RNNCodec,
    bitstream,
    compress,
    compress_progressive,
    decompress,
    decompress_progressive,
    load_checkpoint,
    model_id,
)
from rnncodec.codec.bitstream import HEADER_BYTES, parse_header, payload_bytes, prefix_bitstream, read_bitstream
from rnncodec.codec.image import pad_to_stride, to_input, to_pixels
from rnncodec.data import sample_images
from rnncodec.data.errors import RnncodecError
from rnncodec.data.images import load_image

MODES = ("one-shot", "additive", "residual-scaling")


def _model(mode: str = "additive", cell: str = "lstm", seed: int = 0, gain_growth: float = 1.0) -> RNNCodec:
    torch.manual_seed(seed)
    return RNNCodec(CodecConfig(cell=cell, mode=mode, width=0.125, gain_growth=gain_growth)).eval()


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


def _ends(data: bytes) -> list[int]:
    """Where each complete iteration's chunk ends in ``data`` (raw or entropy-coded)."""
    return [end for _, _, end in bitstream._chunks(parse_header(data), data)]


@pytest.mark.parametrize("entropy_coding", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", MODES)
def test_decompress_equals_evaluation_reconstruction_bit_for_bit_for_every_prefix(mode, cell, entropy_coding):
    model = _model(mode, cell)
    image = _image(48, 64)
    data = compress(model, image, iterations=5, entropy_coding=entropy_coding)
    assert parse_header(data).version == (2 if entropy_coding else 1)
    reference = _reference(model, image, 5)
    for k in range(1, 6):
        assert np.array_equal(decompress(model, data, iterations=k), reference[k - 1]), k
    progressive = decompress_progressive(model, data)
    assert all(np.array_equal(a, b) for a, b in zip(progressive, reference))
    same, encoder_side = compress_progressive(model, image, iterations=5, entropy_coding=entropy_coding)
    assert same == data and len(encoder_side) == 5
    assert all(np.array_equal(a, b) for a, b in zip(encoder_side, reference))


def test_the_bundled_models_encoder_reconstructions_are_the_decoders_bit_for_bit():
    # a trained model on a photograph: the encoder's codes came channels-last from its permuted input,
    # and the decoder's sums then differed from decompress's in a few pixels by one level
    model = load_checkpoint()
    photo = dict(sample_images())["chelsea"][40:168, 100:292]
    data, encoder_side = compress_progressive(model, photo, iterations=8)
    assert all(np.array_equal(a, b) for a, b in zip(decompress_progressive(model, data), encoder_side))


@pytest.mark.parametrize("mode", ["additive", "residual-scaling"])
def test_gain_growth_models_decode_bit_for_bit(mode):
    model = _model(mode, gain_growth=1.3)
    image = _image(32, 48)
    data, encoder_side = compress_progressive(model, image, iterations=4)
    reference = _reference(model, image, 4)
    assert len({r.tobytes() for r in reference}) == 4  # each iteration changes the image
    assert all(np.array_equal(a, b) and np.array_equal(a, c)
               for a, b, c in zip(decompress_progressive(model, data), reference, encoder_side))


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (37, 53), (100, 31)])
def test_odd_sizes_decode_to_the_original_size_with_exact_bit_counts(size):
    model = _model()
    image = _image(*size)
    data = compress(model, image, iterations=3, entropy_coding=False)
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


@pytest.mark.parametrize("entropy_coding", [True, False])
def test_a_file_cut_short_decodes_its_complete_prefix_and_refuses_more(entropy_coding):
    model = _model()
    image = _image(32, 32)
    data = compress(model, image, iterations=4, entropy_coding=entropy_coding)
    cut = data[: _ends(data)[1] + 3]
    with pytest.raises(CodecError, match=r"truncated: it holds 2 complete iterations of 4; decode at most 2"):
        decompress(model, cut)
    assert np.array_equal(decompress(model, cut, iterations=2), decompress(model, data, iterations=2))
    with pytest.raises(CodecError, match="truncated before its first iteration"):
        decompress(model, data[: HEADER_BYTES + 5])
    with pytest.raises(CodecError, match="shorter than the 29-byte header"):
        decompress(model, data[:10])


@pytest.mark.parametrize("entropy_coding", [True, False])
def test_corruption_and_foreign_data_fail_cleanly(entropy_coding):
    model = _model()
    data = bytearray(compress(model, _image(32, 32), iterations=3, entropy_coding=entropy_coding))
    payload = bytearray(data)
    payload[_ends(bytes(data))[0] + 4 + 1] ^= 0x10  # inside iteration 2's codes
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


def _peak_bytes(fn, *args, **kwargs) -> int:
    """Peak memory traced while ``fn`` runs (numpy arrays and Python objects, not torch tensors)."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decompress_memory_does_not_grow_with_the_iteration_count():
    model = _model()
    data = compress(model, _image(256, 256), iterations=16)
    peaks = {k: _peak_bytes(decompress, model, data, iterations=k) for k in (2, 16)}
    # The output alone is 196 KB; keeping every iteration's image (the old decoder) made 16 cost ~8× 2.
    assert peaks[16] < 1.5 * peaks[2], peaks


def test_compress_feeds_the_model_tile_batches_not_a_float_copy_of_the_image(monkeypatch):
    model = _model()
    seen = []
    encode_step = model.encode_step

    def spy(x, states, decoder_state):
        if decoder_state["iterations"] == 0:
            seen.append((tuple(x.shape), x.untyped_storage().nbytes()))
        return encode_step(x, states, decoder_state)

    monkeypatch.setattr(model, "encode_step", spy)
    compress(model, _image(64, 80), iterations=2, tile=32)
    # 64×80 in 32-pixel tiles: six 32×32 tiles, then the 32×16 right column as its own batch
    assert [shape for shape, _ in seen] == [(4, 3, 32, 32), (2, 3, 32, 16)]
    assert all(nbytes == np.prod(shape) * 4 for shape, nbytes in seen)  # only the batch's pixels, as floats


def test_tile_batches_cover_the_grid_once_with_one_shape_each_and_bounded_pixels():
    for height, width, tile in [(70, 100, 32), (256, 256, 16), (3000, 2100, 1024), (1, 1, 4080), (5000, 40, 16)]:
        covered = []
        for th, tw, origins in bitstream._batches(height, width, tile):
            assert len(origins) == 1 or len(origins) * th * tw <= bitstream.DEFAULT_TILE**2
            for y, x in origins:
                assert (th, tw) == (min(tile, -(-height // 16) * 16 - y), min(tile, -(-width // 16) * 16 - x))
                covered.append((y, x))
        grid = [(y, x) for y in range(0, -(-height // 16) * 16, tile) for x in range(0, -(-width // 16) * 16, tile)]
        assert sorted(covered) == grid
    # full default tiles stay one per model call; only the smaller edge tiles share calls
    assert all(len(origins) == 1 for th, tw, origins in bitstream._batches(3000, 2100, 1024) if th == tw == 1024)


def test_small_tiles_decode_in_batches_to_each_tiles_own_reconstruction(monkeypatch):
    model = _model()
    image = _image(256, 256)
    data = compress(model, image, iterations=2, tile=16)
    calls = []
    step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda b, state: calls.append(b.shape[0]) or step(b, state))
    out = decompress(model, data)
    assert calls == [256, 256]  # all 256 tiles at once per iteration, not 512 calls one tile each
    # a batch of one sums in another order than the batch of 256, so a pixel may round the other way
    off = [np.abs(out[y : y + 16, x : x + 16].astype(int) - _reference(model, image[y : y + 16, x : x + 16], 2)[-1])
           for y in range(0, 256, 16) for x in range(0, 256, 16)]
    assert max(d.max() for d in off) <= 1 and sum(np.count_nonzero(d) for d in off) <= 8


def test_batches_split_by_the_pixel_bound_still_decode_exactly(monkeypatch):
    monkeypatch.setattr(bitstream, "DEFAULT_TILE", 48)  # at most 9 tiles of 16×16 per batch
    model = _model("residual-scaling", "gru")
    image = _image(70, 100)
    data = compress(model, image, iterations=3, tile=16)
    progressive = decompress_progressive(model, data)
    for k in (1, 2, 3):
        assert np.array_equal(decompress(model, data, iterations=k), progressive[k - 1])
    assert np.array_equal(progressive[-1][32:48, 80:96], _reference(model, image[32:48, 80:96], 3)[-1])


@pytest.mark.parametrize("entropy_coding", [True, False])
def test_a_file_cut_at_any_byte_decodes_its_complete_prefix_or_fails_cleanly(entropy_coding):
    model = _model()
    data = compress(model, _image(32, 32), iterations=3, entropy_coding=entropy_coding)
    ends = _ends(data)
    full = [decompress(model, data, iterations=k) for k in (1, 2, 3)]
    for n in range(len(data)):
        cut = data[:n]
        complete = sum(end <= n for end in ends)
        with pytest.raises(CodecError):
            decompress(model, cut)
        for k in (1, 2, 3):
            if k <= complete:
                assert np.array_equal(decompress(model, cut, iterations=k), full[k - 1]), (n, k)
            else:
                with pytest.raises(CodecError):
                    decompress(model, cut, iterations=k)


@pytest.mark.parametrize("entropy_coding", [True, False])
def test_random_byte_flips_give_a_codec_error_or_the_exact_decode(entropy_coding):
    model = _model()
    data = compress(model, _image(40, 40), iterations=2, entropy_coding=entropy_coding)
    exact = {k: decompress(model, data, iterations=k) for k in (1, 2)}
    rng = np.random.default_rng(0)
    decoded = 0
    for _ in range(1000):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 5)):
            damaged[pos] ^= int(rng.integers(1, 256))
        for k in (None, 1):
            try:
                out = decompress(model, bytes(damaged), iterations=k)
            except CodecError as exc:
                assert "\n" not in str(exc)
                continue
            assert np.array_equal(out, exact[k or 2])
            decoded += 1
    assert decoded  # damage confined to iteration 2 leaves iteration 1 decodable


def _crafted(height, width, iterations, bits, tile16, mid, payload=b"") -> bytes:
    """A file whose header carries the given fields under a valid header checksum."""
    raw = struct.pack(">4sBIIBHB8s", b"RNNC", 1, height, width, iterations, bits, tile16, mid)
    return raw + struct.pack(">I", zlib.crc32(raw)) + payload


def _refused_cheaply(match: str | None, fn, *args, **kwargs) -> None:
    """``fn`` raises a one-line CodecError matching ``match`` and traces less than 1 MB meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match=match) as info:
            fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value) and peak < 1 << 20, (str(info.value), peak)


def test_crafted_headers_are_refused_in_one_line_without_large_allocations():
    model = _model()
    mid = model_id(model)
    cases = {
        "truncated before its first": [(8192, 8192, 16, 32, 64), (8192, 8192, 1, 32, 1), (65535, 1, 16, 32, 255),
                                       (4096, 4096, 16, 32, 1), (1, 65535, 16, 32, 255)],
        "image size": [(0, 16, 1, 32, 64), (65536, 16, 1, 32, 64), (16, 2**32 - 1, 1, 32, 64),
                       (65535, 65535, 16, 32, 64), (8193, 8192, 1, 32, 64)],  # above what compress writes
        "iteration count": [(16, 16, 0, 32, 64), (16, 16, 17, 32, 64), (16, 16, 255, 32, 64)],
        "code depth": [(16, 16, 1, 0, 64), (16, 16, 1, 1025, 64), (16, 16, 1, 65535, 64)],
        "tile size": [(16, 16, 1, 32, 0)],
        "code bits per block but the model makes 32": [(8192, 8192, 16, 1024, 1), (8192, 8192, 16, 1, 64)],
    }
    for message, fields in cases.items():
        for f in fields:
            data = _crafted(*f, mid, payload=bytes(11))  # 40 bytes in all
            for k in (None, 1):
                _refused_cheaply(message, decompress, model, data, iterations=k)
                _refused_cheaply(message, decompress_progressive, model, data, iterations=k)
            _refused_cheaply(None, prefix_bitstream, data, 1)
    # 8192×8192 at 16 iterations would need 16 × 8 MB of codes and a 201 MB image
    huge = _crafted(8192, 8192, 16, 32, 64, mid, payload=bytes(11))
    _refused_cheaply("truncated before its first", decompress, model, huge, iterations=16)
    assert payload_bytes(huge) == 0  # no complete iteration: found from the header and the length alone


@pytest.mark.parametrize("entropy_coding", [True, False])
def test_read_bitstream_reads_no_more_than_the_header_allows_and_the_file_holds(tmp_path, entropy_coding):
    model = _model()
    data = compress(model, _image(32, 32), iterations=2, entropy_coding=entropy_coding)
    padded = tmp_path / "padded.rnnc"
    padded.write_bytes(data)
    with open(padded, "r+b") as f:
        f.truncate(1 << 30)  # a 1 GB file (sparse: no disk used)
    assert _peak_bytes(read_bitstream, padded) < 1 << 20
    read = read_bitstream(padded)
    assert read == data + b"\0"  # one byte past the declared end: enough to see the trailing data
    with pytest.raises(CodecError, match="has trailing data after its last iteration"):
        decompress(model, read)
    foreign = tmp_path / "foreign.bin"
    with open(foreign, "wb") as f:
        f.truncate(1 << 30)
    _refused_cheaply("wrong magic", read_bitstream, foreign)
    huge = tmp_path / "huge.rnnc"  # 40 bytes whose header declares 16 iterations of 268 MB
    huge.write_bytes(_crafted(8192, 8192, 16, 1024, 64, model_id(model), payload=bytes(11)))
    assert _peak_bytes(read_bitstream, huge) < 1 << 20
    assert read_bitstream(huge) == huge.read_bytes()
    _refused_cheaply("code bits per block", decompress, model, read_bitstream(huge))


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


def test_compress_skips_the_decoder_after_its_last_codes(monkeypatch):
    model = _model()
    image = _image(48, 64)
    progressive, _ = compress_progressive(model, image, iterations=3)
    calls = []
    step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda b, state: calls.append(1) or step(b, state))
    assert compress(model, image, iterations=3) == progressive  # the same file without the third decoder step
    assert len(calls) == 2


def test_progressive_calls_split_their_time_per_iteration_count(monkeypatch):
    monkeypatch.setattr(bitstream, "DEFAULT_TILE", 48)  # several tile batches: each count's time sums over them
    model = _model("residual-scaling")
    image = _image(70, 100)
    enc, dec = [], []
    data, encoder_side = compress_progressive(model, image, iterations=4, tile=16, times=enc)
    decoded = decompress_progressive(model, data, times=dec)
    assert len(enc) == len(dec) == 4 and all(0 < a < b for a, b in itertools.pairwise(enc)) and all(
        0 < a < b for a, b in itertools.pairwise(dec))
    assert all(np.array_equal(a, b) for a, b in zip(decoded, encoder_side))  # timing changes no result
    assert compress_progressive(model, image, iterations=4, tile=16)[0] == data
    dec_two = []
    decompress_progressive(model, prefix_bitstream(data, 2), times=dec_two)
    assert len(dec_two) == 2
