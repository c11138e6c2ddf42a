"""Entropy coding of the binary codes: an adaptive context model driving constriction's range coder.

Toderici et al. (CVPR 2017) code the bits of each iteration with a context model ("BinaryRNN"); ours
is a count model, chosen so that decoding is fast and the same on every machine. Each code bit is
predicted from bits already decoded: six causal neighbours in its own plane (one channel of one
iteration: W, N, NW, NE, two to the left, two above) and the bit at the same place in the previous
iteration. The statistics are shared by all 32 channels, kept separately for bands of iterations,
and adapt as the image is coded (counts halved past ``LIMIT``). Bits go through the range coder
wavefront by wavefront: all positions with the same 2y + x, in every channel at once, have every
neighbour they read already decoded, so an iteration is a few hundred vectorised steps rather than
one Python call per bit. The encoder, which knows every bit, computes all contexts in one pass and hands
the range coder the whole iteration in one call (2× faster; the same bytes).

Counts are integers and probabilities quantised to multiples of 2⁻¹⁶, clipped to [1/64, 63/64]: the
encoder and the decoder compute the same numbers on any machine and any thread count, and no bit
costs more than 6 or less than 0.02 bits (so a file's size bounds the work of decoding it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rnncodec.codec.errors import CodecError

BANDS = (0, 1, 2, 4, 8, 12)  # iterations from which each band of statistics starts
LIMIT = 255  # counts of a context are halved past this many bits: recent statistics weigh more
ONE = 1 << 16  # probabilities are multiples of 1/ONE
P_MIN = ONE // 64
CONTEXTS = 64 * 3  # six neighbour bits × the previous iteration's bit (0, 1, or none yet)
MAX_COST = 6.0  # bits: -log2(P_MIN / ONE)
MIN_COST = 0.0227  # bits, a little under -log2(1 - P_MIN / ONE)


def payload_bounds(bits: int) -> tuple[int, int]:
    """The fewest and the most bytes an iteration of ``bits`` code bits can take once coded."""
    return max(4, int(bits * MIN_COST / 8) // 4 * 4 - 8), int(bits * MAX_COST / 8) + 64


def _wavefronts(height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, columns) of the positions with 2y + x = 0, 1, 2, …: every causal neighbour of a position
    (W, W2: same row, left; NW, N, NE, N2: rows above) lies on an earlier wavefront."""
    yy, xx = np.mgrid[0:height, 0:width]
    front = (2 * yy + xx).ravel()
    order = np.argsort(front, kind="stable")
    starts = np.searchsorted(front[order], np.arange(front.max() + 2))
    flat = [order[starts[i] : starts[i + 1]] for i in range(front.max() + 1)]
    return [(idx // width, idx % width) for idx in flat]


class ContextCoder:
    """The adaptive model of one image's codes (channels × height × width bits per iteration): code
    iteration after iteration with ``encode`` (or ``decode``, in the same order); the model state
    carries from one iteration to the next, so any prefix of iterations decodes on its own."""

    contexts = CONTEXTS

    def __init__(self, channels: int, height: int, width: int):
        self.shape = (channels, height, width)
        self.fronts = _wavefronts(height, width)
        self.rows, self.columns = (np.concatenate(side) for side in zip(*self.fronts))  # wavefront order
        self.n0 = np.zeros(len(BANDS) * self.contexts, np.int64)
        self.n1 = np.zeros(len(BANDS) * self.contexts, np.int64)
        self.previous: np.ndarray | None = None
        self.iteration = 0
        self.ideal_bits = 0.0  # -log2 of the model's probabilities of the bits coded so far

    def _code(self, code_front: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
              known: np.ndarray | None = None) -> np.ndarray:
        """Run one iteration through the model; ``code_front(rows, columns, p)`` codes one wavefront
        (every channel at those positions) given P(bit = 1) for each, and returns its bits. Encoding, the
        iteration's bits are ``known``: the contexts of every position are then computed in one pass
        (each reads only neighbours on earlier wavefronts, so they are those the decoder computes)."""
        c, h, w = self.shape
        band = int(np.searchsorted(BANDS, self.iteration, side="right") - 1)
        plane = np.zeros((c, h + 2, w + 4), np.uint8)  # this iteration's bits, with 2 padding rows above, 2 columns each side
        if known is not None:
            plane[:, 2:, 2 : 2 + w] = known
            every = band * self.contexts + self.context(plane, self.rows, self.columns)
        start, coded = 0, []
        for ys, xs in self.fronts:
            if known is None:
                key = band * self.contexts + self.context(plane, ys, xs)
            else:
                key = every[:, start : start + len(ys)]
                start += len(ys)
            n0, n1 = self.n0[key], self.n1[key]
            q = np.clip((ONE * (2 * n1 + 1)) // (2 * (n0 + n1) + 2), P_MIN, ONE - P_MIN)
            bits = code_front(ys, xs, q.astype(np.float64) / ONE)
            coded.append(np.where(bits == 1, q, ONE - q).ravel())
            seen = np.bincount((2 * key + bits).ravel(), minlength=2 * self.n0.size).reshape(-1, 2)
            self.n0 += seen[:, 0]
            self.n1 += seen[:, 1]
            full = (seen[:, 0] + seen[:, 1] > 0) & (self.n0 + self.n1 > LIMIT)  # of the contexts this wavefront touched
            self.n0[full] = (self.n0[full] + 1) // 2
            self.n1[full] = (self.n1[full] + 1) // 2
            if known is None:
                plane[:, ys + 2, xs + 2] = bits
        self.ideal_bits -= float(np.log2(np.concatenate(coded) / ONE).sum())
        self.previous = plane[:, 2:, 2 : 2 + w]
        self.iteration += 1
        return self.previous

    def context(self, plane: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The context (0 … ``contexts`` − 1) of every channel's bit at positions ``ys, xs`` of the
        iteration being coded, whose bits so far are in ``plane`` (padded by 2 above and each side)."""
        y, x = ys + 2, xs + 2
        ctx = plane[:, y, x - 1].astype(np.int64)
        for dy, dx in ((-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0)):
            ctx = ctx * 2 + plane[:, y + dy, x + dx]
        return ctx * 3 + (self.previous[:, ys, xs] if self.previous is not None else 2)

    def encode(self, bits: np.ndarray) -> bytes:
        """The coded bytes of one iteration's channels × height × width bits (0/1)."""
        import constriction

        bits = np.asarray(bits, np.uint8).reshape(self.shape)
        symbols, probabilities = [], []

        def code_front(ys: np.ndarray, xs: np.ndarray, p: np.ndarray) -> np.ndarray:
            symbols.append(bits[:, ys, xs])
            probabilities.append(p.ravel())
            return symbols[-1]

        self._code(code_front, known=bits)
        encoder = constriction.stream.queue.RangeEncoder()  # one call: the same queue as one per wavefront
        encoder.encode(np.concatenate([s.ravel() for s in symbols]).astype(np.int32),
                       constriction.stream.model.Bernoulli(perfect=False), np.concatenate(probabilities))
        return encoder.get_compressed().astype("<u4").tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        """One iteration's channels × height × width bits from the bytes ``encode`` wrote."""
        import constriction

        if len(payload) % 4:
            raise CodecError("an iteration's coded bits do not fill whole 32-bit words; the file is corrupted")
        model = constriction.stream.model.Bernoulli(perfect=False)
        try:
            decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").copy())
        except (ValueError, RuntimeError, AssertionError) as exc:  # constriction asserts on invalid data
            raise CodecError(f"an iteration's coded bits cannot be decoded ({exc}); the file is corrupted") from None

        def code_front(ys: np.ndarray, xs: np.ndarray, p: np.ndarray) -> np.ndarray:
            try:
                return decoder.decode(model, p.ravel()).reshape(p.shape).astype(np.uint8)
            except (ValueError, RuntimeError, AssertionError) as exc:  # constriction asserts on invalid data
                raise CodecError(f"an iteration's coded bits cannot be decoded ({exc}); the file is corrupted") from None

        return self._code(code_front)
