"""Entropy coding of the codes (bitstream version 2): lossless, progressive, the same in any process and
thread count, within 1% of the model's ideal code length, and bounded on hostile files."""

import hashlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from rnncodec.codec import CodecError, bitstream, compress, decompress, decompress_progressive, load_checkpoint
from rnncodec.codec.bitstream import parse_header, payload_bytes, prefix_bitstream, read_codes
from rnncodec.codec.entropy import ContextCoder, payload_bounds
from rnncodec.data.photos import sample_images


@pytest.fixture(scope="module")
def model():
    return load_checkpoint()  # the bundled model: real codes, with the statistics entropy coding exploits


@pytest.fixture(scope="module")
def photos():
    images = dict(sample_images())
    return [images["coffee"][40:104, 60:108], images["astronaut"][100:197, 200:330], images["chelsea"][:160, :224]]


def test_entropy_coding_is_lossless_and_progressive_on_several_images_and_sizes(model, photos):
    for image in photos:
        coded, raw = compress(model, image, 4), compress(model, image, 4, entropy_coding=False)
        assert parse_header(coded).version == 2
        assert len(coded) < len(raw) or image.size < 20_000  # a tiny image pays 4 bytes a chunk for its length
        for k in range(1, 5):
            assert np.array_equal(decompress(model, coded, iterations=k), decompress(model, raw, iterations=k))
            assert prefix_bitstream(coded, k) == compress(model, image, k)  # a prefix is the file of k iterations
        assert all(np.array_equal(a, b) for a, b in zip(decompress_progressive(model, coded),
                                                       decompress_progressive(model, raw)))


def test_the_coded_size_is_within_one_percent_of_the_ideal_code_length(model, photos):
    for image in photos:
        raw = compress(model, image, 6, entropy_coding=False)
        codes = read_codes(raw)
        coder = ContextCoder(*codes.shape[1:])
        payloads = [coder.encode(plane) for plane in codes]
        coded = compress(model, image, 6)
        assert payload_bytes(coded) == sum(map(len, payloads))
        assert 8 * payload_bytes(coded) <= 1.01 * coder.ideal_bits + 32 * len(payloads)  # ≤ one word per iteration
        if image.size > 20_000:
            assert coder.ideal_bits < 0.99 * codes.size  # and the model does predict (2.5% at 112×144 px, 6 iterations)


@pytest.mark.parametrize("kind", ["uniform", "constant", "rare ones", "blocks"])
def test_the_one_pass_encoder_matches_the_wavefront_decoder_on_any_statistics(kind):
    """The encoder computes every context at once; the decoder wavefront by wavefront. Constant planes put up to
    32 × 16 bits of one wavefront into one context, past twice the halving limit: a context is halved once per
    wavefront that touches it, by both sides alike."""
    rng = np.random.default_rng(7)
    shape = (32, 24, 40)
    planes = []
    for t in range(7):
        if kind == "uniform":
            plane = rng.integers(0, 2, shape)
        elif kind == "constant":
            plane = np.full(shape, t % 2)
        elif kind == "rare ones":
            plane = rng.random(shape) < 0.02
        else:
            plane = np.kron(rng.integers(0, 2, (32, 6, 8)), np.ones((1, 4, 5), int))
        planes.append(np.asarray(plane, np.uint8))
    encoder, decoder = ContextCoder(*shape), ContextCoder(*shape)
    payloads = [encoder.encode(plane) for plane in planes]
    assert all(np.array_equal(decoder.decode(data), plane) for data, plane in zip(payloads, planes))
    assert np.array_equal(encoder.n0, decoder.n0) and np.array_equal(encoder.n1, decoder.n1)
    assert encoder.ideal_bits == pytest.approx(decoder.ideal_bits, rel=1e-12)
    if kind == "constant":
        assert 8 * sum(map(len, payloads)) < 0.05 * sum(plane.size for plane in planes)  # near 0.0227 bits a bit


def test_the_coded_format_is_unchanged():
    """Files written before keep decoding: the payloads of fixed planes, hashed when the coder was wavefront by
    wavefront on both sides (the model is integer arithmetic, so this is the same on every machine)."""
    rng = np.random.default_rng(2026)
    planes = []
    for t, share in enumerate((0.5, 0.1, 0.9, 0.02, 0.5)):
        plane = rng.random((32, 12, 20)) < share
        plane[:, : 2 * t] = t % 2
        planes.append(plane.astype(np.uint8))
    coder = ContextCoder(32, 12, 20)
    payload = b"".join(coder.encode(plane) for plane in planes)
    assert hashlib.sha256(payload).hexdigest() == "19f46b4ac15c99f53fc5210ef0dc76f729510203fcbccd508bde7eea86e25035"


CODER = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from rnncodec.codec import compress, decompress, load_checkpoint
from rnncodec.codec.bitstream import read_codes
from rnncodec.data.photos import sample_images
model = load_checkpoint()
image = dict(sample_images())["coffee"][40:136, 60:188]
if sys.argv[2] == "encode":
    sys.stdout.buffer.write(compress(model, image, 5))
else:
    data = sys.stdin.buffer.read()
    raw = compress(model, image, 5, entropy_coding=False)
    assert np.array_equal(read_codes(data), read_codes(raw))
    assert np.array_equal(decompress(model, data), decompress(model, raw))
    print("same codes")
"""


def test_files_decode_the_same_in_a_fresh_process_with_another_thread_count(model):
    encoded = subprocess.run([sys.executable, "-c", CODER, "1", "encode"], capture_output=True, timeout=300)
    assert encoded.returncode == 0, encoded.stderr.decode()[-2000:]
    decoded = subprocess.run([sys.executable, "-c", CODER, "2", "decode"], input=encoded.stdout, capture_output=True,
                             timeout=300)
    assert decoded.returncode == 0 and decoded.stdout.strip() == b"same codes", decoded.stderr.decode()[-2000:]


def _with_crc(chunk: bytes) -> bytes:
    return chunk + struct.pack(">I", zlib.crc32(chunk))


def test_hostile_lengths_and_payloads_are_refused_or_decode_without_harm(model, photos):
    data = compress(model, photos[0], 2)
    header = parse_header(data)
    head = data[: header.nbytes]
    fewest, most = payload_bounds(8 * header.chunk_bytes)
    for length in (0, 3, fewest - 4, most + 4, 2**32 - 1, fewest + 2):
        hostile = head + _with_crc(struct.pack(">I", length) + bytes(min(length, 64)))
        with pytest.raises(CodecError, match="iteration 1 declares|truncated") as info:
            decompress(model, hostile, iterations=1)
        assert "\n" not in str(info.value)
    rng = np.random.default_rng(0)
    for _ in range(20):  # garbage under a valid length and CRC: some codes, never a crash
        length = int(rng.integers(fewest // 4, most // 4)) * 4
        junk = _with_crc(struct.pack(">I", length) + rng.integers(0, 256, length, dtype=np.uint8).tobytes())
        try:
            out = decompress(model, head + junk, iterations=1)
        except CodecError as exc:
            assert "\n" not in str(exc)
        else:
            assert out.shape == photos[0].shape
    unknown = bytearray(head)
    unknown[-5] = 7  # the coder byte, with the header's CRC made valid again
    unknown[-4:] = struct.pack(">I", zlib.crc32(bytes(unknown[:-4])))
    with pytest.raises(CodecError, match="coder 7"):
        decompress(model, bytes(unknown) + data[header.nbytes :])


def test_a_tiny_file_cannot_declare_a_huge_image(model):
    """A version 2 header for 8192×8192 at 16 iterations with a few bytes of codes: the smallest payload
    such an image can take is ~370 kB per iteration, so it is refused from the lengths alone; larger
    images than compress writes are refused from the header."""
    header = bitstream.Header(8192, 8192, 16, 32, 1024, bitstream.model_id(model), bitstream.CONTEXT)
    hostile = header.pack() + _with_crc(struct.pack(">I", 64) + bytes(64))
    with pytest.raises(CodecError, match="iteration 1 declares 64 bytes"):
        decompress(model, hostile)
    header = bitstream.Header(16384, 16384, 16, 32, 1024, bitstream.model_id(model), bitstream.CONTEXT)
    with pytest.raises(CodecError, match="image size 16384×16384 is outside .* above 67,108,864 pixels"):
        decompress(model, header.pack() + _with_crc(struct.pack(">I", 64) + bytes(64)))


def test_a_resized_header_with_a_valid_checksum_fails_in_one_line(model, photos):
    """The size fields change what the range decoder expects of every payload; constriction then asserts
    (an AssertionError, not a ValueError), which must still reach the user as a CodecError."""
    from dataclasses import replace

    data = compress(model, photos[1], 2)
    header = parse_header(data)
    rest = data[len(header.pack()):]
    outcomes = set()
    for dh, dw in [(-16, 0), (16, 0), (0, 16), (16, 16), (-32, -32), (1, 0), (0, -1), (64, 0)]:
        resized = replace(header, height=header.height + dh, width=header.width + dw)
        try:
            decompress(model, resized.pack() + rest)
            outcomes.add("decoded")
        except CodecError as exc:
            assert "\n" not in str(exc)
            outcomes.add(str(exc)[:60])
    assert any("cannot be decoded" in o for o in outcomes), outcomes
