"""Bitstreams: ``compress(model, image, iterations) -> bytes`` and ``decompress(model, data)``.

Layout (big-endian)::

    header  magic "RNNC" | version u8 | height u32 | width u32 | iterations u8 |
            bits per 16×16 block u16 | tile side / 16 u8 | model id 8 bytes | CRC-32 of header u32
    then for each iteration in order:
            the code bits of the whole (padded) image, C×H/16×W/16 in C order, packed MSB first,
            then their CRC-32 u32

Iterations follow one another, so any prefix of them decodes: ``decompress(..., iterations=k)``
reads only the first k, and a file cut short still decodes up to its last complete iteration.
Large images are coded in independent tiles (1024×1024 by default) to bound memory; the tile
side is in the header so the decoder uses the same grid. Tiles of one shape go through the model
in batches of at most 1024×1024 pixels, the same batches when encoding and decoding. The codes
are stored raw (no entropy coding), as in the paper's curves without it: 0.125 bpp per
iteration plus 4 bytes per iteration and 29 bytes of header.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rnncodec.codec.checkpoint import model_id
from rnncodec.codec.errors import CodecError
from rnncodec.codec.image import to_input, to_pixels
from rnncodec.codec.model import RNNCodec
from rnncodec.codec.options import MAX_BITS, MAX_ITERATIONS, STRIDE
from rnncodec.data.images import to_rgb8

MAGIC = b"RNNC"
VERSION = 1
MAX_SIDE = 65535
DEFAULT_TILE = 1024
_HEADER = struct.Struct(">4sBIIBHB8s")
_CRC = struct.Struct(">I")
HEADER_BYTES = _HEADER.size + _CRC.size


@dataclass(frozen=True)
class Header:
    height: int
    width: int
    iterations: int
    bits: int
    tile: int
    model_id: bytes

    @property
    def code_shape(self) -> tuple[int, int, int]:
        return self.bits, -(-self.height // STRIDE), -(-self.width // STRIDE)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one iteration's packed codes (without its CRC)."""
        c, h, w = self.code_shape
        return -(-c * h * w // 8)

    def pack(self) -> bytes:
        raw = _HEADER.pack(MAGIC, VERSION, self.height, self.width, self.iterations, self.bits,
                           self.tile // STRIDE, self.model_id)
        return raw + _CRC.pack(zlib.crc32(raw))


def parse_header(data: bytes) -> Header:
    """Read and bound-check the header of ``data``."""
    if len(data) < HEADER_BYTES:
        raise CodecError(f"not an rnncodec file: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
    raw = data[: _HEADER.size]
    magic, version, height, width, iterations, bits, tile16, mid = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise CodecError("not an rnncodec file (wrong magic bytes); give a file written by `rnncodec compress`")
    if version != VERSION:
        raise CodecError(f"rnncodec file version {version} is not supported (this rnncodec reads version {VERSION}); upgrade rnncodec")
    if _CRC.unpack_from(data, _HEADER.size)[0] != zlib.crc32(raw):
        raise CodecError("the file's header is corrupted (checksum mismatch)")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise CodecError(f"the header's image size {width}×{height} is outside 1..{MAX_SIDE}; the file is corrupted")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise CodecError(f"the header's iteration count {iterations} is outside 1..{MAX_ITERATIONS}; the file is corrupted")
    if not 1 <= bits <= MAX_BITS:
        raise CodecError(f"the header's code depth {bits} is outside 1..{MAX_BITS} bits per block; the file is corrupted")
    if tile16 == 0:
        raise CodecError("the header's tile size is 0; the file is corrupted")
    return Header(height, width, iterations, bits, tile16 * STRIDE, mid)


@contextlib.contextmanager
def _evaluating(model: RNNCodec) -> Iterator[torch.device]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _spans(length: int, tile: int) -> list[range]:
    """Tile starts along one side of ``length`` padded pixels, grouped by tile size: full tiles, then
    the shorter last one."""
    full = length - length % tile
    return [r for r in (range(0, full, tile), range(full, length, tile)) if r]


def _batches(height: int, width: int, tile: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """The tile grid over the image padded to multiples of ``STRIDE``, as batches of equally shaped
    tiles: (tile height, tile width, tile origins). Batching lets small tiles share model calls; a batch
    holds at most ``DEFAULT_TILE``² pixels (or one larger tile), so memory stays that of one default
    tile. Encoder and decoder take the same batches, so their arithmetic is the same."""
    ph, pw = -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE
    for ys in _spans(ph, tile):
        th = min(tile, ph - ys[0])
        for xs in _spans(pw, tile):
            tw = min(tile, pw - xs[0])
            origins = itertools.product(ys, xs)
            size = max(1, DEFAULT_TILE**2 // (th * tw))
            while batch := list(itertools.islice(origins, size)):
                yield th, tw, batch


def _bit_positions(header: Header, th: int, tw: int, origins: list[tuple[int, int]]) -> np.ndarray:
    """Where the codes of a batch of tiles lie among one iteration's C×H/16×W/16 code bits, as an
    N×C×th/16×tw/16 array of bit indices."""
    c, h, w = header.code_shape
    corners = np.array(origins, dtype=np.int64) // STRIDE
    rows = corners[:, :1] + np.arange(th // STRIDE)
    cols = corners[:, 1:] + np.arange(tw // STRIDE)
    return np.arange(c)[:, None, None] * (h * w) + rows[:, None, :, None] * w + cols[:, None, None, :]


def _crops(image: np.ndarray, th: int, tw: int, origins: list[tuple[int, int]]) -> np.ndarray:
    """The batch's tiles of the uint8 image, N×th×tw×3, edge-replicated past the image (as
    ``rnncodec.codec.image.pad_to_stride`` pads)."""
    tiles = []
    for y, x in origins:
        crop = image[y : y + th, x : x + tw]
        if crop.shape[:2] != (th, tw):
            crop = np.pad(crop, ((0, th - crop.shape[0]), (0, tw - crop.shape[1]), (0, 0)), mode="edge")
        tiles.append(crop)
    return np.stack(tiles)


def _as_rgb8(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CodecError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} of shape {image.shape}; "
                         "read files with codec.load_image")
    if not (1 <= image.shape[0] <= MAX_SIDE and 1 <= image.shape[1] <= MAX_SIDE):
        raise CodecError(f"image size {image.shape[1]}×{image.shape[0]} is outside 1..{MAX_SIDE} pixels a side")
    return image


def compress(model: RNNCodec, image: np.ndarray | Image.Image, iterations: int,
             tile: int = DEFAULT_TILE) -> bytes:
    """Encode an H×W×3 uint8 image with ``iterations`` iterations (0.125 bpp each)."""
    image = _as_rgb8(image)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise CodecError(f"iterations must be in 1..{MAX_ITERATIONS}, got {iterations}")
    if tile % STRIDE or not STRIDE <= tile <= 255 * STRIDE:
        raise CodecError(f"tile must be a multiple of {STRIDE} in {STRIDE}..{255 * STRIDE}, got {tile}")
    header = Header(image.shape[0], image.shape[1], iterations, model.config.bits, tile, model_id(model))
    codes = np.zeros((iterations, math.prod(header.code_shape)), dtype=bool)
    with _evaluating(model) as device:
        for th, tw, origins in _batches(header.height, header.width, tile):
            x = to_input(torch.from_numpy(_crops(image, th, tw, origins)).to(device).permute(0, 3, 1, 2))
            positions = _bit_positions(header, th, tw, origins)
            for t, b in enumerate(model(x, iterations)["codes"]):
                codes[t, positions] = (b > 0).cpu().numpy()
    parts = [header.pack()]
    for t in range(iterations):
        chunk = np.packbits(codes[t]).tobytes()
        parts += [chunk, _CRC.pack(zlib.crc32(chunk))]
    return b"".join(parts)


def _checked(model: RNNCodec, data: bytes, iterations: int | None) -> tuple[Header, int]:
    """The header of ``data`` and the number of iterations to decode, after checking, from the
    header and the length of ``data`` alone, that the file holds them intact (nothing is allocated
    for the image before that)."""
    header = parse_header(data)
    if header.bits != model.config.bits:
        raise CodecError(f"the file has {header.bits} code bits per block but the model makes {model.config.bits}; "
                         "decompress with the checkpoint that compressed it")
    if header.model_id != model_id(model):
        raise CodecError(f"the file was written by model {header.model_id.hex()}, not by this one "
                         f"({model_id(model).hex()}); decompress with the checkpoint that compressed it")
    step = header.chunk_bytes + _CRC.size
    complete = min(header.iterations, (len(data) - HEADER_BYTES) // step)
    k = header.iterations if iterations is None else iterations
    if not 1 <= k <= header.iterations:
        raise CodecError(f"the file holds {header.iterations} iterations; ask for 1..{header.iterations}, not {k}")
    if k > complete:
        raise CodecError(f"the file is truncated: it holds {complete} complete iterations of {header.iterations}; "
                         f"decode at most {complete} (--iterations {complete})" if complete else
                         "the file is truncated before its first iteration's codes ends; nothing can be decoded")
    if iterations is None and len(data) != HEADER_BYTES + header.iterations * step:
        raise CodecError(f"the file has {len(data) - HEADER_BYTES - header.iterations * step} bytes of trailing data "
                         "after its last iteration; it is corrupted or not an rnncodec file")
    view = memoryview(data)
    for t in range(k):
        start = HEADER_BYTES + t * step
        if _CRC.unpack_from(data, start + header.chunk_bytes)[0] != zlib.crc32(view[start : start + header.chunk_bytes]):
            raise CodecError(f"the codes of iteration {t + 1} are corrupted (checksum mismatch)"
                             + (f"; iterations 1..{t} are intact (--iterations {t})" if t else ""))
    return header, k


def _decode(model: RNNCodec, data: bytes, iterations: int | None, every: bool) -> np.ndarray:
    """Decode ``data`` tile batch by tile batch, iterations inner: a k×H×W×3 array of the
    reconstructions after each iteration if ``every``, else a 1×H×W×3 array of the last one. Codes
    are read from ``data`` per batch and iteration; the model calls are the same either way."""
    header, k = _checked(model, data, iterations)
    step = header.chunk_bytes + _CRC.size
    chunks = [np.frombuffer(data, np.uint8, header.chunk_bytes, HEADER_BYTES + t * step) for t in range(k)]
    images = np.empty((k if every else 1, header.height, header.width, 3), dtype=np.uint8)
    with _evaluating(model) as device:
        for th, tw, origins in _batches(header.height, header.width, header.tile):
            positions = _bit_positions(header, th, tw, origins)
            byte, shift = positions >> 3, (7 - (positions & 7)).astype(np.uint8)
            del positions
            state = model.initial_state()
            for t in range(k):
                bits = torch.from_numpy((chunks[t][byte] >> shift) & 1).to(device)
                x_hat = model.decode_step(bits.float() * 2 - 1, state)
                if every or t == k - 1:
                    pixels = to_pixels(x_hat).permute(0, 2, 3, 1).cpu().numpy()
                    out = images[t if every else 0]
                    for tile, (y, x) in zip(pixels, origins):
                        out[y : y + th, x : x + tw] = tile[: header.height - y, : header.width - x]
    return images


def decompress_progressive(model: RNNCodec, data: bytes, iterations: int | None = None) -> list[np.ndarray]:
    """Decode ``data``: the H×W×3 uint8 reconstruction after each of the first ``iterations``
    iterations (all that the file holds by default)."""
    return list(_decode(model, data, iterations, every=True))


def decompress(model: RNNCodec, data: bytes, iterations: int | None = None) -> np.ndarray:
    """Decode ``data`` to an H×W×3 uint8 image using its first ``iterations`` iterations. Memory: the
    output image plus one tile batch's model state, whatever the number of iterations."""
    return _decode(model, data, iterations, every=False)[0]


def read_bitstream(path: str | Path) -> bytes:
    """The bytes of an rnncodec file, read no further than its header says the file can reach (plus one
    byte, so trailing data is still noticed): a huge foreign file costs no memory."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"no such file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            header = parse_header(head)
            # read(n) allocates n bytes up front: bound n by what the file holds, not only by the header
            rest = max(0, os.fstat(f.fileno()).st_size - HEADER_BYTES)
            return head + f.read(min(rest, header.iterations * (header.chunk_bytes + _CRC.size) + 1))
    except OSError as exc:
        raise CodecError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); check the file and its permissions") from None


def prefix_bitstream(data: bytes, iterations: int) -> bytes:
    """The file ``compress(model, image, iterations)`` writes, cut from the file of the same
    image at more iterations: the header with the smaller count (and its CRC) and the first
    ``iterations`` chunks."""
    header = parse_header(data)
    if not 1 <= iterations <= header.iterations:
        raise CodecError(f"the file holds {header.iterations} iterations, cannot cut {iterations}")
    step = header.chunk_bytes + _CRC.size
    if len(data) != HEADER_BYTES + header.iterations * step:
        raise CodecError("the file is truncated or has trailing data; give a complete rnncodec file")
    return replace(header, iterations=iterations).pack() + data[HEADER_BYTES : HEADER_BYTES + iterations * step]


def payload_bytes(data: bytes) -> int:
    """Bytes of code bits in an rnncodec file: no header, no checksums."""
    header = parse_header(data)
    return header.iterations * header.chunk_bytes
