"""Image quality metrics: PSNR on 8-bit RGB, MS-SSIM, and area under a rate–distortion curve.

MS-SSIM (Wang et al. 2003) in its standard form (5 scales, 11×11 Gaussian window, σ = 1.5)
needs images wider than 160 pixels; there we call pytorch-msssim, as the published curves do.
32×32 training patches cannot run it, so they use ``PATCH_MS_SSIM``: 4 scales (32, 16, 8, 4),
a 3×3 Gaussian window with σ = 1.5, and the first four standard scale weights renormalised to
sum to one. Everything else (constants, pooling, clamping) follows the standard form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _standard_ms_ssim
from pytorch_msssim.ssim import gaussian_filter as _standard_blur
from torch import Tensor

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# ms_ssim_against scores its images in chunks of about this many values (8 MB of float32): on a 2-core CPU,
# chunks of 2-4 Kodak images ran about 2× slower per image than one at a time (page faults, cache misses)
CHUNK_VALUES = 1 << 21


@dataclass(frozen=True)
class MSSSIMConfig:
    win_size: int
    win_sigma: float
    weights: tuple[float, ...]
    k1: float = 0.01
    k2: float = 0.03

    def min_side(self) -> int:
        """The smallest image side on which every scale still has a valid window."""
        return (self.win_size - 1) * 2 ** (len(self.weights) - 1) + 1


STANDARD_MS_SSIM = MSSSIMConfig(11, 1.5, STANDARD_WEIGHTS)
PATCH_MS_SSIM = MSSSIMConfig(3, 1.5, tuple(w / sum(STANDARD_WEIGHTS[:4]) for w in STANDARD_WEIGHTS[:4]))


def psnr(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0) -> float:
    """PSNR in dB between two images of equal shape (∞ when identical)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == b.dtype == np.uint8:  # integer differences and one dot product: the same exact sum, 2× faster
        d = np.subtract(a, b, dtype=np.int16).ravel().astype(np.float64)
        mse = float(d @ d) / d.size
    else:
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).expand(channels, 1, 1, size)


def _blur(x: Tensor, win: Tensor) -> Tensor:
    c = x.shape[1]
    x = F.conv2d(x, win, groups=c)
    return F.conv2d(x, win.transpose(2, 3), groups=c)


def _ssim_cs(x: Tensor, y: Tensor, win: Tensor, data_range: float, cfg: MSSSIMConfig) -> tuple[Tensor, Tensor]:
    c1, c2 = (cfg.k1 * data_range) ** 2, (cfg.k2 * data_range) ** 2
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    var_x = _blur(x * x, win) - mu_x**2
    var_y = _blur(y * y, win) - mu_y**2
    cov = _blur(x * y, win) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim_with(x: Tensor, y: Tensor, data_range: float, cfg: MSSSIMConfig) -> Tensor:
    """Differentiable MS-SSIM per image (shape N) under configuration ``cfg``."""
    if min(x.shape[-2:]) < cfg.min_side():
        raise ValueError(f"MS-SSIM with {len(cfg.weights)} scales and a {cfg.win_size}×{cfg.win_size} window "
                         f"needs images of at least {cfg.min_side()} pixels a side, got {tuple(x.shape[-2:])}")
    win = _gaussian(cfg.win_size, cfg.win_sigma, x.shape[1], x)
    values = []
    for level in range(len(cfg.weights)):
        ssim, cs = _ssim_cs(x, y, win, data_range, cfg)
        if level < len(cfg.weights) - 1:
            values.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
    values.append(torch.relu(ssim))
    # Python-float exponents: a tensor made from cfg.weights is a host-to-device copy, refused in CUDA graph capture
    product = values[0] ** cfg.weights[0]
    for value, weight in zip(values[1:], cfg.weights[1:]):
        product = product * value ** weight
    return product.mean(1)


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 255.0) -> Tensor:
    """MS-SSIM per image (shape N) of N×3×H×W tensors: the standard 5-scale form through
    pytorch-msssim when the images are large enough for it, ``PATCH_MS_SSIM`` otherwise."""
    if min(x.shape[-2:]) > (STANDARD_MS_SSIM.win_size - 1) * 16:
        return _standard_ms_ssim(x, y, data_range=data_range, size_average=False)
    return ms_ssim_with(x, y, data_range, PATCH_MS_SSIM)


def _halve(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2, padding=odd sides)``, as pytorch-msssim downsamples; for even sides of a
    channels-last image as a vectorised sum of rows, then of columns (4× faster than the pooling kernel on
    3 channels). The sums are in another order, which on 8-bit images changes nothing: their pyramids
    (multiples of 4⁻ˡ below 256) are exact in float32."""
    n, c, h, w = x.shape
    if h % 2 or w % 2 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.avg_pool2d(x, 2, padding=[h % 2, w % 2])
    pairs = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w * c)
    rows = (pairs[:, :, 0] + pairs[:, :, 1]).view(n, h // 2, w // 2, 2 * c)
    return (rows[..., :c] + rows[..., c:]).mul_(0.25).permute(0, 3, 1, 2)


def _pyramid(x: Tensor, win: Tensor, levels: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per scale of a reference image: the image, its blurred mean μ, μ² and its variance, as
    pytorch-msssim computes them."""
    out = []
    for level in range(levels):
        if level:
            x = _halve(x)
        mu = _standard_blur(x, win)
        mu_sq = mu.pow(2)
        out.append((x, mu, mu_sq, _standard_blur(x * x, win) - mu_sq))
    return out


def _ms_ssim_on(pyramid: list[tuple[Tensor, Tensor, Tensor, Tensor]], y: Tensor, win: Tensor, data_range: float,
                cfg: MSSSIMConfig) -> Tensor:
    """MS-SSIM per image of the N×C×H×W ``y`` against the reference whose :func:`_pyramid` is given,
    with pytorch-msssim's operations in its order, written in place where it can."""
    c1, c2 = (cfg.k1 * data_range) ** 2, (cfg.k2 * data_range) ** 2
    factors = []
    for level, (x, mu1, mu1_sq, sigma1_sq) in enumerate(pyramid):
        if level:
            y = _halve(y)
        mu2 = _standard_blur(y, win)
        mu1_mu2 = mu1 * mu2
        last = level == len(pyramid) - 1
        mu2_sq = mu2.square() if last else mu2.square_()
        denominator = (_standard_blur(y * y, win) - mu2_sq).add_(sigma1_sq).add_(c2)  # σ₁² + σ₂² + C₂
        cs_map = (_standard_blur(x * y, win) - mu1_mu2).mul_(2).add_(c2).div_(denominator)  # (2σ₁₂ + C₂) / …
        if last:
            cs_map.mul_(mu1_mu2.mul_(2).add_(c1).div_(mu1_sq + mu2_sq + c1))  # the SSIM map
        factors.append(torch.relu(torch.flatten(cs_map, 2).mean(-1)))
    weights = y.new_tensor(cfg.weights).view(-1, 1, 1)
    return torch.prod(torch.stack(factors) ** weights, dim=0).mean(1)


def ms_ssim_against(reference: Tensor, images: Tensor, data_range: float = 255.0) -> Tensor:
    """Standard 5-scale MS-SSIM (shape N) of each of the N×C×H×W ``images`` against one 1×C×H×W
    ``reference``, both taken as float32: the values of ``ms_ssim(reference.expand_as(images), images)``
    (pytorch-msssim's arithmetic; on 8-bit images, whose pyramids are exact, to the bit), with the reference's
    pyramid and blurred statistics computed once and the images converted and scored ``CHUNK_VALUES`` values
    at a time."""
    if reference.shape[0] != 1 or reference.shape[1:] != images.shape[1:]:
        raise ValueError(f"expected one reference shaped like the images, got {tuple(reference.shape)} "
                         f"and {tuple(images.shape)}")
    cfg = STANDARD_MS_SSIM
    if min(images.shape[-2:]) < cfg.min_side():
        raise ValueError(f"standard MS-SSIM needs images of at least {cfg.min_side()} pixels a side, "
                         f"got {tuple(images.shape[-2:])}")
    # channels_last: oneDNN's depthwise blur runs about 10× faster on it than on NCHW, with the same values
    x = reference.to(torch.float32, memory_format=torch.channels_last)
    win = _gaussian(cfg.win_size, cfg.win_sigma, x.shape[1], x)
    pyramid = _pyramid(x, win, len(cfg.weights))
    step = max(1, CHUNK_VALUES // x.numel())
    return torch.cat([_ms_ssim_on(pyramid, y.to(torch.float32, memory_format=torch.channels_last), win, data_range,
                                  cfg) for y in images.split(step)])


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on the decibel scale used by rate–distortion plots: −10·log10(1 − MS-SSIM)."""
    return float("inf") if value >= 1 else -10 * np.log10(1 - value)


def rd_auc(bpp: np.ndarray, values: np.ndarray, lo: float = 0.125, hi: float = 2.0) -> float:
    """Area under a rate–distortion curve between ``lo`` and ``hi`` bpp (trapezoids on the
    curve interpolated linearly; the curve must cover the range), as the paper's Table 2."""
    bpp, values = np.asarray(bpp, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(bpp)
    bpp, values = bpp[order], values[order]
    if bpp[0] > lo + 1e-9 or bpp[-1] < hi - 1e-9:
        raise ValueError(f"the curve spans {bpp[0]:.3f}..{bpp[-1]:.3f} bpp, which does not cover {lo}..{hi}")
    grid = np.unique(np.concatenate([[lo, hi], bpp[(bpp > lo) & (bpp < hi)]]))
    return float(np.trapezoid(np.interp(grid, bpp, values), grid))
