"""The residual recurrent image codec of Toderici et al., CVPR 2017.

"Full Resolution Image Compression with Recurrent Neural Networks", arXiv:1608.05148.
Read top to bottom: configuration, the two recurrent cells, binarizer, encoder, decoder,
gain estimator, and the iteration loop that ties them together.

Pixels enter as floats in [-0.5, 0.5] (``uint8 / 255 - 0.5``), N×3×H×W with H and W
multiples of 16. Each iteration emits ``bits`` binary codes per 16×16 pixel block:
32 bits, i.e. 128 bits per 32×32 patch or 0.125 bpp, per iteration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnncodec.codec.errors import CodecError
from rnncodec.codec.options import (
    ACTIVATIONS,
    BITS,
    CELLS,
    MAX_BITS,
    MAX_CHANNELS,
    MAX_GAIN_GROWTH,
    MAX_TRAIN_ITERATIONS,
    MAX_KERNEL,
    MAX_WIDTH,
    MODES,
    STRIDE,
)
from rnncodec.data.errors import shown


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# Settings added after the first release, with the value a stored configuration without them implies
# (which is what the model did before): such models keep decoding, and their ``model_id``, unchanged.
_ADDED = {"gain_growth": 1.0, "output_scale": 1.0}
_SEQUENCES = {"encoder_channels": 4, "encoder_hidden_kernels": 3, "decoder_channels": 4, "decoder_hidden_kernels": 4}
_TYPES = {
    "cell": lambda v: isinstance(v, str), "mode": lambda v: isinstance(v, str),
    "activation": lambda v: isinstance(v, str), "bias": lambda v: isinstance(v, bool),
    "width": _is_finite, "gain_growth": _is_finite, "output_scale": _is_finite,
    "bits": _is_int, "kernel_size": _is_int, "decoder_input_channels": _is_int, "gain_channels": _is_int,
}
_TYPE_NAMES = {"cell": "text", "mode": "text", "activation": "text", "bias": "true or false",
               "width": "a finite number", "gain_growth": "a finite number",
               "output_scale": "a finite number", "bits": "an integer", "kernel_size": "an integer",
               "decoder_input_channels": "an integer", "gain_channels": "an integer"}


@dataclass(frozen=True)
class CodecConfig:
    """Every size of the network. The defaults are the paper's 32×32 architecture."""

    cell: str = "lstm"
    mode: str = "additive"
    width: float = 1.0  # multiplies every channel count except the code bits
    bits: int = BITS  # binary codes per 16×16 block
    kernel_size: int = 3
    encoder_channels: tuple[int, ...] = (64, 256, 512, 512)  # E-Conv, E-RNN 1..3
    encoder_hidden_kernels: tuple[int, ...] = (1, 1, 1)
    decoder_input_channels: int = 512  # D-Conv 1
    decoder_channels: tuple[int, ...] = (512, 512, 256, 128)  # D-RNN 1..4
    decoder_hidden_kernels: tuple[int, ...] = (1, 1, 3, 3)
    gain_channels: int = 32  # residual scaling only
    gain_growth: float = 1.0  # fixed residual scaling: iteration t gains gain_growth ** (t - 1)
    # Each iteration adds output_scale · D(bₜ), D in (-1, 1); one-shot reconstructs D(bₜ) / 2 whatever it is.
    # 0.5 (the 1zb port's tanh/2) with no biases and a randomly initialised output layer trained 3.6 dB
    # better at iteration 16 than 1.0 with biases and a zeroed one (codec/pretrained/README.md).
    output_scale: float = 0.5
    activation: str = "none"  # after E-Conv and D-Conv 1
    bias: bool = False

    def __post_init__(self) -> None:
        # Configurations also come from files (checkpoints): check every type and bound before
        # anything is built from them, so a crafted file cannot allocate out of proportion.
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SEQUENCES:
                ok = isinstance(value, (list, tuple)) and len(value) == _SEQUENCES[f.name] and all(map(_is_int, value))
                if ok:
                    object.__setattr__(self, f.name, tuple(int(v) for v in value))
                else:
                    problems.append(f"{f.name} must be {_SEQUENCES[f.name]} integers, got {shown(value)}")
            elif not _TYPES[f.name](value):
                problems.append(f"{f.name} must be {_TYPE_NAMES[f.name]}, got {shown(value)}")
        if problems:
            raise CodecError("invalid codec configuration: " + "; ".join(problems))
        if self.cell not in CELLS:
            problems.append(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not 0 < self.width <= MAX_WIDTH:
            problems.append(f"width {self.width} is outside (0, {MAX_WIDTH:g}]")
        if not 1 <= self.gain_growth <= MAX_GAIN_GROWTH:
            problems.append(f"gain_growth {self.gain_growth} is outside [1, {MAX_GAIN_GROWTH:g}]")
        elif self.gain_growth != 1 and self.mode == "one-shot":
            problems.append("gain_growth needs a mode that adds residuals (additive or residual-scaling), not one-shot")
        if not 0 < self.output_scale <= 1:
            problems.append(f"output_scale {self.output_scale} is outside (0, 1]")
        if not 1 <= self.bits <= MAX_BITS:
            problems.append(f"bits {self.bits} is outside 1..{MAX_BITS}")
        kernels = (self.kernel_size, *self.encoder_hidden_kernels, *self.decoder_hidden_kernels)
        if any(not 1 <= k <= MAX_KERNEL or k % 2 == 0 for k in kernels):
            problems.append(f"kernel sizes must be odd in 1..{MAX_KERNEL}, got {kernels}")
        counts = (*self.encoder_channels, self.decoder_input_channels, *self.decoder_channels, self.gain_channels)
        if not problems and any(not 1 <= n or self.channels(n) > MAX_CHANNELS for n in counts):
            problems.append(f"channel counts times the width must lie in 1..{MAX_CHANNELS}, got {counts} × {self.width:g}")
        if problems:
            raise CodecError("invalid codec configuration: " + "; ".join(problems))

    def channels(self, n: int) -> int:
        """``n`` scaled by ``width``, rounded to a multiple of 4 (depth-to-space needs it)."""
        return max(4, 4 * round(n * self.width / 4))

    def to_dict(self) -> dict[str, Any]:
        """The settings; those added after the first release only where they differ from the value their
        absence implies, so that older models keep their ``checkpoint.model_id`` (it hashes this)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k in _ADDED and v == _ADDED[k])}

    @classmethod
    def from_dict(cls, d: Any) -> CodecConfig:
        if not isinstance(d, dict):
            raise CodecError(f"a codec configuration must be a mapping of settings, got {shown(d)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise CodecError(f"unknown codec configuration keys {unknown[:5]}; known keys: {sorted(known)}")
        return cls(**{**_ADDED, **d})


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2·sigmoid(2x) − 1, within 2e-7 of ``torch.tanh`` in fp32, whose CPU kernel is not
    vectorised (2.5× slower than this at 2 threads on 3M elements); the backward is tanh's own."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """``torch.tanh``, through :class:`_Tanh` for fp32 on the CPU (in bf16 the sum would lose small values)."""
    return _Tanh.apply(x) if x.device.type == "cpu" and x.dtype == torch.float32 else torch.tanh(x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes two kinds of convolution on the CPU as matrix products:

    - 1×1 convolutions (stride 1, no padding) of one image, e.g. a Kodak photograph at evaluation: oneDNN
      reorders NCHW tensors to its blocked layout and back around each, which on few channels costs more
      than the product (the decoder's last layer: 8.5 ms against 0.8; every 1×1 layer of the bundled model
      on a Kodak image as fast or faster), and the product sums alike on 1 and 2 threads, where oneDNN did
      not (files and decoded pixels depended on the thread count). On training batches neither way
      measured faster;
    - small outputs (at most 4×4 positions) of large layers (at least 2²⁰ weights), over unfolded patches.
      On 32×32 patches the paper-size model's deep layers have 2×2 and 4×4 maps, where oneDNN's backward
      pass ran 1.4–3.4× slower than the matrix product's on the widest 3×3 layers, and forward and backward
      together 1.3× slower on D-RNN 2's input convolution and 1.1–2.2× on the 1×1 hidden convolutions;
      on the smaller layers of width 0.25 the library was as fast or up to 1.4× faster (per layer, forward
      and backward, batch 32, 1 and 2 threads).

    Other convolutions and GPUs keep the library's."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if x.is_cuda or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and x.shape[0] == 1:
            out = (weight.view(weight.shape[0], -1) @ x.reshape(x.shape[1], -1)).view(1, -1, *x.shape[2:])
            return out if bias is None else out + bias.view(-1, 1, 1)
        ho, wo = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        if ho * wo > 16 or weight.numel() < 1 << 20:
            return super()._conv_forward(x, weight, bias)
        cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # N × C·kh·kw × ho·wo
        out = cols.transpose(1, 2).reshape(-1, cols.shape[1]) @ weight.reshape(weight.shape[0], -1).t()
        if bias is not None:
            out = out + bias
        return out.view(x.shape[0], ho, wo, -1).permute(0, 3, 1, 2)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM: gates from a (strided) input convolution plus a hidden convolution."""

    def __init__(self, cin: int, hidden: int, kernel: int, stride: int, hidden_kernel: int, bias: bool):
        super().__init__()
        self.conv_x = Conv2d(cin, 4 * hidden, kernel, stride, kernel // 2, bias=bias)
        self.conv_h = Conv2d(hidden, 4 * hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Any]:
        gates = self.conv_x(x).float()  # under bf16 autocast the state stays fp32 (see RNNCodec.decode_step)
        if state is not None:  # the first iteration's state is zero: skip its convolution
            gates = gates + self.conv_h(state[0])
        ifo, g = gates.split([3 * gates.shape[1] // 4, gates.shape[1] // 4], dim=1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=1)
        c = i * tanh(g)
        if state is not None:
            c = c + f * state[1]
        h = o * tanh(c)
        return h, (h, c)


class ConvGRUCell(nn.Module):
    """Convolutional GRU; the reset gate multiplies the hidden state before the candidate's
    hidden convolution (Cho et al. 2014, as in Toderici et al. 2017)."""

    def __init__(self, cin: int, hidden: int, kernel: int, stride: int, hidden_kernel: int, bias: bool):
        super().__init__()
        self.conv_x = Conv2d(cin, 3 * hidden, kernel, stride, kernel // 2, bias=bias)
        self.conv_h = Conv2d(hidden, 2 * hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)
        self.conv_hn = Conv2d(hidden, hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Any]:
        gx = self.conv_x(x).float()
        zr_x, n_x = gx.split([2 * gx.shape[1] // 3, gx.shape[1] // 3], dim=1)
        if state is None:  # zero state: h' = (1 - z) * n
            z = torch.sigmoid(zr_x[:, : n_x.shape[1]])
            h = (1 - z) * tanh(n_x)
            return h, h
        z, r = torch.sigmoid(zr_x + self.conv_h(state)).chunk(2, dim=1)
        n = tanh(n_x + self.conv_hn(r * state))
        h = torch.lerp(n, state, z)  # (1 - z) * n + z * h
        return h, h


def _cell(config: CodecConfig, cin: int, hidden: int, stride: int, hidden_kernel: int) -> nn.Module:
    cls = ConvLSTMCell if config.cell == "lstm" else ConvGRUCell
    return cls(cin, hidden, config.kernel_size, stride, hidden_kernel, config.bias)


def _activation(config: CodecConfig) -> nn.Module:
    return nn.LeakyReLU(0.2) if config.activation == "leaky-relu" else nn.Identity()


class Binarizer(nn.Module):
    """1×1 conv, tanh, then ±1: stochastic with P(+1) = (1 + x) / 2 and a straight-through
    gradient in training, deterministic sign (0 → +1) at evaluation."""

    def __init__(self, cin: int, bits: int, bias: bool):
        super().__init__()
        self.conv = Conv2d(cin, bits, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        y = tanh(self.conv(x))
        if self.training:
            b = torch.where(torch.rand_like(y) < (1 + y) / 2, 1.0, -1.0)
            return b + (y - y.detach())  # exactly ±1 forward, identity gradient backward
        return torch.where(y >= 0, 1.0, -1.0).to(y.dtype)


class Encoder(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        c = [config.channels(n) for n in config.encoder_channels]
        self.conv = nn.Conv2d(3, c[0], config.kernel_size, 2, config.kernel_size // 2, bias=config.bias)
        self.act = _activation(config)
        self.rnns = nn.ModuleList(
            _cell(config, c[i], c[i + 1], 2, k) for i, k in enumerate(config.encoder_hidden_kernels)
        )
        self.out_channels = c[-1]

    def forward(self, x: Tensor, states: list) -> Tensor:
        x = self.act(self.conv(x))
        for i, rnn in enumerate(self.rnns):
            x, states[i] = rnn(x, states[i])
        return x


class Decoder(nn.Module):
    """Codes → residual (or image, one-shot). Each D-RNN is followed by depth-to-space ×2."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        cin = config.channels(config.decoder_input_channels)
        self.conv_in = Conv2d(config.bits, cin, 1, bias=config.bias)
        self.act = _activation(config)
        rnns = []
        for n, k in zip(config.decoder_channels, config.decoder_hidden_kernels):
            hidden = config.channels(n)
            rnns.append(_cell(config, cin, hidden, 1, k))
            cin = hidden // 4
        self.rnns = nn.ModuleList(rnns)
        self.conv_out = Conv2d(cin, 3, 1, bias=config.bias)

    def forward(self, b: Tensor, states: list) -> Tensor:
        x = self.act(self.conv_in(b))
        for i, rnn in enumerate(self.rnns):
            x, states[i] = rnn(x, states[i])
            x = F.pixel_shuffle(x, 2)
        return tanh(self.conv_out(x))


class GainEstimator(nn.Module):
    """Residual scaling (paper §3): a gain per 32×32 block estimated from the current
    reconstruction, so the decoder can compute it too. Four 3×3 stride-2 convs with ELU,
    a 2×2 stride-2 conv with ELU, plus 2 so that gains lie in (1, ∞)."""

    def __init__(self, channels: int, bias: bool):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for _ in range(4):
            layers += [nn.Conv2d(cin, channels, 3, 2, 1, bias=bias), nn.ELU()]
            cin = channels
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, 1, 2, 2, bias=bias)

    def forward(self, x_hat: Tensor) -> Tensor:
        y = self.features(x_hat)
        y = F.pad(y, (0, y.shape[3] % 2, 0, y.shape[2] % 2), mode="replicate")
        g = F.elu(self.out(y)) + 2
        g = g.repeat_interleave(32, dim=2).repeat_interleave(32, dim=3)
        return g[:, :, : x_hat.shape[2], : x_hat.shape[3]]


class RNNCodec(nn.Module):
    """Encoder, binarizer and decoder applied for several iterations to the residual.

    r₀ = x;  bₜ = B(E(rₜ₋₁));  rₜ = x − x̂ₜ, with x̂ₜ by mode:
    one-shot x̂ₜ = D(bₜ) / 2; additive x̂ₜ = x̂ₜ₋₁ + s·D(bₜ); residual scaling
    x̂ₜ = x̂ₜ₋₁ + s·D(bₜ) / gₜ₋₁ (s: ``output_scale``) where the encoder sees rₜ₋₁ · gₜ₋₁ and gₜ = G(x̂ₜ), g₀ = 1.
    ``gain_growth`` γ > 1 multiplies gₜ by γᵗ (in additive mode gₜ = γᵗ): a fixed gain, known to both
    sides, so the RNNs need not count iterations to know how small the residual has become.
    """

    def __init__(self, config: CodecConfig | None = None):
        super().__init__()
        self.config = config or CodecConfig()
        self.encoder = Encoder(self.config)
        self.binarizer = Binarizer(self.encoder.out_channels, self.config.bits, self.config.bias)
        self.decoder = Decoder(self.config)
        self.gain = (
            GainEstimator(self.config.channels(self.config.gain_channels), self.config.bias)
            if self.config.mode == "residual-scaling" else None
        )

    def initial_state(self) -> dict[str, Any]:
        """The decoder's state before the first iteration (shared by training and decompress)."""
        return {"rnn": [None] * len(self.decoder.rnns), "x_hat": None, "gain": None, "iterations": 0}

    def encode_step(self, residual: Tensor, states: list, decoder_state: dict[str, Any]) -> Tensor:
        """One encoder iteration: codes bₜ = B(E(rₜ₋₁ · gₜ₋₁)), the gain gₜ₋₁ read from ``decoder_state``;
        updates ``states`` (one per E-RNN, None while zero) in place."""
        gain = decoder_state["gain"]
        return self.binarizer(self.encoder(residual if gain is None else residual * gain, states))

    def decode_step(self, b: Tensor, state: dict[str, Any]) -> Tensor:
        """One decoder iteration: codes bₜ → reconstruction x̂ₜ; updates ``state`` in place."""
        # The encoder's codes may come channels-last (from a permuted input, or the matrix-product
        # convolution); the decoder must see the layout decompress gives it, or its sums differ.
        # Under bf16 autocast the decoder's output is bf16; x̂ is summed in fp32, as bf16 resolves x̂ ≈ ±0.4
        # only to 2⁻⁹ (half a grey level) and would round away the small increments of late iterations.
        out = self.decoder(b.contiguous(), state["rnn"]).float()
        x_hat, gain = state["x_hat"], state["gain"]
        if self.config.mode == "one-shot":
            x_hat = out / 2
        else:
            out = out * self.config.output_scale
            if gain is not None:
                out = out / gain
            x_hat = out if x_hat is None else x_hat + out
        gain = self.gain(x_hat) if self.gain is not None else None
        state["iterations"] += 1
        growth = self.config.gain_growth ** state["iterations"]
        if growth != 1:
            gain = growth if gain is None else gain * growth
        state["gain"], state["x_hat"] = gain, x_hat
        return x_hat

    def forward(self, x: Tensor, iterations: int) -> dict[str, list[Tensor]]:
        """Run ``iterations`` steps on ``x`` in [-0.5, 0.5]. Returns per-iteration lists:
        ``x_hat`` (reconstructions), ``codes`` (±1, N×bits×H/16×W/16), ``residuals`` (x − x̂ₜ)."""
        if x.shape[2] % STRIDE or x.shape[3] % STRIDE:
            raise CodecError(f"input height and width must be multiples of {STRIDE}, got {tuple(x.shape[2:])}; pad the image first")
        if not 1 <= iterations <= MAX_TRAIN_ITERATIONS:
            raise CodecError(f"iterations must be in 1..{MAX_TRAIN_ITERATIONS}, got {iterations}")
        enc_states: list = [None] * len(self.encoder.rnns)
        dec_state = self.initial_state()
        residual = x
        out: dict[str, list[Tensor]] = {"x_hat": [], "codes": [], "residuals": []}
        for _ in range(iterations):
            b = self.encode_step(residual, enc_states, dec_state)
            x_hat = self.decode_step(b, dec_state)
            residual = x - x_hat
            out["x_hat"].append(x_hat)
            out["codes"].append(b)
            out["residuals"].append(residual)
        return out
