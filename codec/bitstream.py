"""Bitstreams: ``compress(model, image, iterations) -> bytes`` and ``decompress(model, data)``.

Layout (big-endian)::

    header  magic "RNNC" | version u8 | height u32 | width u32 | iterations u8 |
            bits per 16×16 block u16 | tile side / 16 u8 | model id 8 bytes |
            (version 2:) coder u8 | CRC-32 of the header u32
    then for each iteration in order, version 1 (raw codes):
            the code bits of the whole (padded) image, C×H/16×W/16 in C order, packed MSB first,
            then their CRC-32 u32
    or version 2, coder 1 (entropy coded, the default):
            payload length u32 | the iteration's bits coded by ``rnncodec.codec.entropy`` |
            CRC-32 of the length and the payload u32

Iterations follow one another, so any prefix of them decodes: ``decompress(..., iterations=k)``
reads only the first k, and a file cut short still decodes up to its last complete iteration (the
entropy coder's state runs from one iteration to the next, so a prefix is exactly the file that
compressing with k iterations writes). Large images are coded in independent tiles (1024×1024 by
default) to bound memory; the tile side is in the header so the decoder uses the same grid. Tiles
of one shape go through the model in batches of at most 1024×1024 pixels, the same batches when
encoding and decoding. Raw codes (``entropy_coding=False``, ``--raw``; the paper's curves without
entropy coding) cost 0.125 bpp per iteration plus 4 bytes per iteration and 29 bytes of header.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rnncodec.codec.checkpoint import model_id
from rnncodec.codec.entropy import ContextCoder, payload_bounds
from rnncodec.codec.errors import CodecError
from rnncodec.codec.image import to_input, to_pixels
from rnncodec.codec.model import RNNCodec
from rnncodec.codec.options import MAX_BITS, MAX_ITERATIONS, STRIDE
from rnncodec.data.files import open_regular
from rnncodec.data.images import MAX_PIXELS, to_rgb8

MAGIC = b"RNNC"
RAW, CONTEXT = 0, 1  # coders: raw packed bits (version 1 files), the adaptive context model (version 2)
MAX_SIDE = 65535
DEFAULT_TILE = 1024
_HEADERS = {1: struct.Struct(">4sBIIBHB8s"), 2: struct.Struct(">4sBIIBHB8sB")}
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct(">I")
HEADER_BYTES = _HEADERS[1].size + _CRC.size  # of a raw (version 1) file


@dataclass(frozen=True)
class Header:
    height: int
    width: int
    iterations: int
    bits: int
    tile: int
    model_id: bytes
    coder: int = RAW

    @property
    def version(self) -> int:
        return 1 if self.coder == RAW else 2

    @property
    def nbytes(self) -> int:
        return _HEADERS[self.version].size + _CRC.size

    @property
    def code_shape(self) -> tuple[int, int, int]:
        return self.bits, -(-self.height // STRIDE), -(-self.width // STRIDE)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one iteration's packed codes (without its CRC)."""
        c, h, w = self.code_shape
        return -(-c * h * w // 8)

    def pack(self) -> bytes:
        fields = (MAGIC, self.version, self.height, self.width, self.iterations, self.bits, self.tile // STRIDE,
                  self.model_id, *([self.coder] if self.version == 2 else []))
        raw = _HEADERS[self.version].pack(*fields)
        return raw + _CRC.pack(zlib.crc32(raw))

    def raw_file_bytes(self) -> int:
        """Bytes of the raw (version 1) file of the same image and iterations."""
        return HEADER_BYTES + self.iterations * (self.chunk_bytes + _CRC.size)


def parse_header(data: bytes) -> Header:
    """Read and bound-check the header of ``data``."""
    if len(data) < HEADER_BYTES:
        raise CodecError(f"not an rnncodec file: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
    if data[:4] != MAGIC:
        raise CodecError("not an rnncodec file (wrong magic bytes); give a file written by `rnncodec compress`")
    version = data[4]
    if version not in _HEADERS:
        raise CodecError(f"rnncodec file version {version} is not supported (this rnncodec reads versions 1 and 2); "
                         "upgrade rnncodec")
    layout = _HEADERS[version]
    if len(data) < layout.size + _CRC.size:
        raise CodecError(f"not an rnncodec file: {len(data)} bytes is shorter than its {layout.size + _CRC.size}-byte header")
    raw = data[: layout.size]
    _, _, height, width, iterations, bits, tile16, mid, *coder = layout.unpack(raw)
    if _CRC.unpack_from(data, layout.size)[0] != zlib.crc32(raw):
        raise CodecError("the file's header is corrupted (checksum mismatch)")
    coder = coder[0] if coder else RAW
    if version == 2 and coder != CONTEXT:
        raise CodecError(f"the file's codes use coder {coder}, which this rnncodec does not know; upgrade rnncodec")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise CodecError(f"the header's image size {width}×{height} is outside 1..{MAX_SIDE} a side or above "
                         f"{MAX_PIXELS:,} pixels, larger than any image compress writes; the file is corrupted")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise CodecError(f"the header's iteration count {iterations} is outside 1..{MAX_ITERATIONS}; the file is corrupted")
    if not 1 <= bits <= MAX_BITS:
        raise CodecError(f"the header's code depth {bits} is outside 1..{MAX_BITS} bits per block; the file is corrupted")
    if tile16 == 0:
        raise CodecError("the header's tile size is 0; the file is corrupted")
    return Header(height, width, iterations, bits, tile16 * STRIDE, mid, coder)


def _chunks(header: Header, data: bytes) -> list[tuple[int, int, int]]:
    """(start, length, end) of the payload of each complete iteration in ``data``, in order, stopping
    at the first one cut short; ``end`` is past the chunk's CRC. Every length is bound-checked against
    what the header's image size allows (and so the work of decoding against the file's size)."""
    found, offset = [], header.nbytes
    if header.coder == RAW:
        step = header.chunk_bytes + _CRC.size
        complete = min(header.iterations, (len(data) - offset) // step)
        return [(offset + t * step, header.chunk_bytes, offset + (t + 1) * step) for t in range(complete)]
    fewest, most = payload_bounds(8 * header.chunk_bytes)
    for t in range(header.iterations):
        if offset + _LENGTH.size > len(data):
            break
        (length,) = _LENGTH.unpack_from(data, offset)
        if not fewest <= length <= most or length % 4:
            raise CodecError(f"iteration {t + 1} declares {length} bytes of codes, which no {header.width}×{header.height} "
                             f"image can take ({fewest}..{most}, whole words); the file is corrupted")
        end = offset + _LENGTH.size + length + _CRC.size
        if end > len(data):
            break
        found.append((offset + _LENGTH.size, length, end))
        offset = end
    return found


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
    if not (1 <= image.shape[0] <= MAX_SIDE and 1 <= image.shape[1] <= MAX_SIDE) or image[..., 0].size > MAX_PIXELS:
        raise CodecError(f"image size {image.shape[1]}×{image.shape[0]} is outside 1..{MAX_SIDE} pixels a side or "
                         f"above {MAX_PIXELS:,} pixels; split it into smaller images")
    return image


class _Clock:
    """The wall time of one compress or decompress at K iterations, split so that the time the same call
    at k ≤ K iterations takes can be read off it: ``once`` (work done whatever k) and, per iteration t,
    ``parts[name][t]`` (one name per kind of work). Stopped (``on`` false), it does nothing."""

    def __init__(self, model: RNNCodec, on: bool):
        self.device, self.on, self.once = next(model.parameters()).device, on, 0.0
        self.parts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * MAX_ITERATIONS)
        self.last = time.perf_counter()

    def lap(self, part: str | None = None, t: int = 0) -> None:
        """Charge the time since the last lap to ``part`` at iteration ``t`` (to ``once`` if None)."""
        if not self.on:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if part is None:
            self.once += now - self.last
        else:
            self.parts[part][t] += now - self.last
        self.last = now

    def total(self, k: int, per_iteration: Sequence[str] = (), before_last: Sequence[str] = (),
              last: Sequence[str] = ()) -> float:
        """``once`` plus, of each part, iterations 1..k (``per_iteration``), 1..k-1 (``before_last``) or k alone (``last``)."""
        return (self.once + sum(sum(self.parts[p][:k]) for p in per_iteration)
                + sum(sum(self.parts[p][: k - 1]) for p in before_last) + sum(self.parts[p][k - 1] for p in last))


def _encode(model: RNNCodec, image: np.ndarray | Image.Image, iterations: int, tile: int, entropy_coding: bool,
            keep: bool, times: list[float] | None = None) -> tuple[bytes, np.ndarray | None]:
    clock = _Clock(model, on=times is not None)
    image = _as_rgb8(image)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise CodecError(f"iterations must be in 1..{MAX_ITERATIONS}, got {iterations}")
    if tile % STRIDE or not STRIDE <= tile <= 255 * STRIDE:
        raise CodecError(f"tile must be a multiple of {STRIDE} in {STRIDE}..{255 * STRIDE}, got {tile}")
    header = Header(image.shape[0], image.shape[1], iterations, model.config.bits, tile, model_id(model),
                    CONTEXT if entropy_coding else RAW)
    codes = np.zeros((iterations, math.prod(header.code_shape)), dtype=bool)
    images = np.empty((iterations, *image.shape), dtype=np.uint8) if keep else None
    with _evaluating(model) as device:
        for th, tw, origins in _batches(header.height, header.width, tile):
            x = to_input(torch.from_numpy(_crops(image, th, tw, origins)).to(device).permute(0, 3, 1, 2))
            positions = _bit_positions(header, th, tw, origins)
            enc_states: list = [None] * len(model.encoder.rnns)
            state, residual = model.initial_state(), x
            clock.lap()
            for t in range(iterations):
                b = model.encode_step(residual, enc_states, state)
                codes[t, positions] = (b > 0).cpu().numpy()
                clock.lap("encode", t)
                if t == iterations - 1 and images is None:
                    break  # the last codes need no reconstruction
                x_hat = model.decode_step(b, state)
                residual = x - x_hat
                clock.lap("decode", t)
                if images is not None:
                    _place(images[t], to_pixels(x_hat), origins)
                    clock.lap("keep", t)
    parts = [header.pack()]
    coder = ContextCoder(*header.code_shape) if entropy_coding else None
    clock.lap()
    for t in range(iterations):
        if coder is None:
            chunk = np.packbits(codes[t]).tobytes()
        else:
            chunk = _LENGTH.pack(len(payload := coder.encode(codes[t]))) + payload
        parts += [chunk, _CRC.pack(zlib.crc32(chunk))]
        clock.lap("code", t)
    data = b"".join(parts)
    clock.lap()
    if times is not None:
        times[:] = [clock.total(k, ("encode", "code"), before_last=("decode",)) for k in range(1, iterations + 1)]
    return data, images


def _place(out: np.ndarray, pixels: torch.Tensor, origins: list[tuple[int, int]]) -> None:
    """Write a batch of N×3×th×tw uint8 tiles into the H×W×3 image ``out``, cropped at its edges."""
    tiles = pixels.permute(0, 2, 3, 1).cpu().numpy()
    th, tw = tiles.shape[1:3]
    for tile, (y, x) in zip(tiles, origins):
        out[y : y + th, x : x + tw] = tile[: out.shape[0] - y, : out.shape[1] - x]


def compress(model: RNNCodec, image: np.ndarray | Image.Image, iterations: int, tile: int = DEFAULT_TILE,
             entropy_coding: bool = True) -> bytes:
    """Encode an H×W×3 uint8 image with ``iterations`` iterations (0.125 bpp each before entropy
    coding); ``entropy_coding=False`` writes the raw codes (a version 1 file)."""
    return _encode(model, image, iterations, tile, entropy_coding, keep=False)[0]


def compress_progressive(model: RNNCodec, image: np.ndarray | Image.Image, iterations: int,
                         tile: int = DEFAULT_TILE, entropy_coding: bool = True,
                         times: list[float] | None = None) -> tuple[bytes, list[np.ndarray]]:
    """``compress``, plus the reconstruction after each iteration that the encoder computed anyway:
    the images ``decompress_progressive`` of the file gives, bit for bit, without decoding it.
    ``times``, if given, receives for k = 1..``iterations`` the seconds ``compress(model, image, k)``
    spends, timed within this call: its work done once, the network's first k encoder steps and k - 1
    decoder steps, and the coding of k iterations (keeping the reconstructions is not counted)."""
    data, images = _encode(model, image, iterations, tile, entropy_coding, keep=True, times=times)
    return data, list(images)


def _checked(model: RNNCodec, data: bytes, iterations: int | None) -> tuple[Header, list[tuple[int, int, int]]]:
    """:func:`_intact`, once the file is known to come from ``model``."""
    header = parse_header(data)
    if header.bits != model.config.bits:
        raise CodecError(f"the file has {header.bits} code bits per block but the model makes {model.config.bits}; "
                         "decompress with the checkpoint that compressed it")
    if header.model_id != model_id(model):
        raise CodecError(f"the file was written by model {header.model_id.hex()}, not by this one "
                         f"({model_id(model).hex()}); decompress with the checkpoint that compressed it")
    return _intact(header, data, iterations)


def _intact(header: Header, data: bytes, iterations: int | None) -> tuple[Header, list[tuple[int, int, int]]]:
    """The header of ``data`` and the chunks of the iterations to decode, after checking, from the
    header and the length of ``data`` alone, that the file holds them intact (nothing is allocated
    for the image before that)."""
    chunks = _chunks(header, data)
    complete = len(chunks)
    k = header.iterations if iterations is None else iterations
    if not 1 <= k <= header.iterations:
        raise CodecError(f"the file holds {header.iterations} iterations; ask for 1..{header.iterations}, not {k}")
    if k > complete:
        raise CodecError(f"the file is truncated: it holds {complete} complete iterations of {header.iterations}; "
                         f"decode at most {complete} (--iterations {complete})" if complete else
                         "the file is truncated before its first iteration's codes ends; nothing can be decoded")
    if iterations is None and len(data) != chunks[-1][2]:
        raise CodecError("the file has trailing data after its last iteration; it is corrupted or not an rnncodec file")
    view = memoryview(data)
    for t, (start, length, end) in enumerate(chunks[:k]):
        covered = start if header.coder == RAW else start - _LENGTH.size  # version 2 checks the length too
        if _CRC.unpack_from(data, end - _CRC.size)[0] != zlib.crc32(view[covered : start + length]):
            raise CodecError(f"the codes of iteration {t + 1} are corrupted (checksum mismatch)"
                             + (f"; iterations 1..{t} are intact (--iterations {t})" if t else ""))
    return header, chunks[:k]


def _code_chunks(header: Header, data: bytes, chunks: list[tuple[int, int, int]],
                 clock: _Clock | None = None) -> list[np.ndarray]:
    """Each iteration's codes as packed bits (the raw layout), entropy-decoded where they are coded."""
    if header.coder == RAW:
        return [np.frombuffer(data, np.uint8, length, start) for start, length, _ in chunks]
    coder = ContextCoder(*header.code_shape)
    out = []
    for t, (start, length, _) in enumerate(chunks):
        out.append(np.packbits(coder.decode(data[start : start + length])))
        if clock is not None:
            clock.lap("code", t)
    return out


def read_codes(data: bytes, iterations: int | None = None) -> np.ndarray:
    """The code bits of the first ``iterations`` iterations of a file (all by default), checked and
    entropy-decoded where they are coded: a k × C × H/16 × W/16 uint8 array of 0/1, no model needed."""
    header, chunks = _intact(parse_header(data), data, iterations)
    n = math.prod(header.code_shape)
    return np.stack([np.unpackbits(packed, count=n).reshape(header.code_shape)
                     for packed in _code_chunks(header, data, chunks)])


def _decode(model: RNNCodec, data: bytes, iterations: int | None, every: bool,
            times: list[float] | None = None) -> np.ndarray:
    """Decode ``data`` tile batch by tile batch, iterations inner: a k×H×W×3 array of the
    reconstructions after each iteration if ``every``, else a 1×H×W×3 array of the last one. Codes
    are read from ``data`` per batch and iteration; the model calls are the same either way."""
    clock = _Clock(model, on=times is not None)
    header, complete = _checked(model, data, iterations)
    clock.lap()
    chunks, k = _code_chunks(header, data, complete, clock), len(complete)
    images = np.empty((k if every else 1, header.height, header.width, 3), dtype=np.uint8)
    with _evaluating(model) as device:
        for th, tw, origins in _batches(header.height, header.width, header.tile):
            positions = _bit_positions(header, th, tw, origins)
            byte, shift = positions >> 3, (7 - (positions & 7)).astype(np.uint8)
            del positions
            state = model.initial_state()
            clock.lap()
            for t in range(k):
                bits = torch.from_numpy((chunks[t][byte] >> shift) & 1).to(device)
                x_hat = model.decode_step(bits.float() * 2 - 1, state)
                clock.lap("decode", t)
                if every or t == k - 1:
                    _place(images[t if every else 0], to_pixels(x_hat), origins)
                    clock.lap("place", t)
    if times is not None:
        times[:] = [clock.total(j, ("code", "decode"), last=("place",)) for j in range(1, k + 1)]
    return images


def decompress_progressive(model: RNNCodec, data: bytes, iterations: int | None = None,
                           times: list[float] | None = None) -> list[np.ndarray]:
    """Decode ``data``: the H×W×3 uint8 reconstruction after each of the first ``iterations``
    iterations (all that the file holds by default). ``times``, if given, receives for each k the
    seconds ``decompress(model, data, k)`` spends, timed within this call: its work done once, the
    decoding of k iterations' codes, k decoder steps and one output image."""
    return list(_decode(model, data, iterations, every=True, times=times))




def decompress(model: RNNCodec, data: bytes, iterations: int | None = None) -> np.ndarray:
    """Decode ``data`` to an H×W×3 uint8 image using its first ``iterations`` iterations. Memory: the
    output image plus one tile batch's model state, whatever the number of iterations."""
    return _decode(model, data, iterations, every=False)[0]


def read_bitstream(path: str | Path) -> bytes:
    """The bytes of an rnncodec file, read no further than its header and chunk lengths say the file can
    reach (plus one byte, so trailing data is still noticed): a huge foreign file costs no memory."""
    path = Path(path)
    try:
        with open_regular(path, "rnncodec", CodecError) as f:
            size = os.fstat(f.fileno()).st_size
            header = parse_header(f.read(HEADER_BYTES + 1))
            f.seek(0)
            # read(n) allocates n bytes up front: bound every n by what the file holds, not only by the header
            parts = [f.read(header.nbytes)]
            if header.coder == RAW:
                parts.append(f.read(min(size, header.iterations * (header.chunk_bytes + _CRC.size))))
            else:
                most = payload_bounds(8 * header.chunk_bytes)[1]
                for _ in range(header.iterations):
                    parts.append(length := f.read(_LENGTH.size))
                    if len(length) < _LENGTH.size or _LENGTH.unpack(length)[0] > most:
                        break  # cut short or corrupted: the decoder says which
                    parts.append(f.read(min(size, _LENGTH.unpack(length)[0] + _CRC.size)))
            return b"".join(parts) + f.read(1)
    except OSError as exc:
        raise CodecError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); check the file and its permissions") from None


def prefix_bitstream(data: bytes, iterations: int) -> bytes:
    """The file ``compress(model, image, iterations)`` writes, cut from the file of the same
    image at more iterations: the header with the smaller count (and its CRC) and the first
    ``iterations`` chunks."""
    header = parse_header(data)
    if not 1 <= iterations <= header.iterations:
        raise CodecError(f"the file holds {header.iterations} iterations, cannot cut {iterations}")
    chunks = _chunks(header, data)
    if len(chunks) != header.iterations or chunks[-1][2] != len(data):
        raise CodecError("the file is truncated or has trailing data; give a complete rnncodec file")
    return replace(header, iterations=iterations).pack() + data[header.nbytes : chunks[iterations - 1][2]]


def payload_bytes(data: bytes) -> int:
    """Bytes of codes in an rnncodec file (after entropy coding, if any): no header, lengths or checksums."""
    header = parse_header(data)
    return sum(length for _, length, _ in _chunks(header, data))
