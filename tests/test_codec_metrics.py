"""Metrics against pytorch-msssim and an independent NumPy/SciPy computation."""

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from scipy.signal import convolve2d

from rnncodec.codec import metrics
from rnncodec.codec.metrics import (
    PATCH_MS_SSIM,
    STANDARD_MS_SSIM,
    ms_ssim,
    ms_ssim_against,
    ms_ssim_db,
    ms_ssim_with,
    psnr,
    rd_auc,
)


def _pair(n: int, h: int, w: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g) * 255
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 255)
    return x, y


def test_standard_form_equals_pytorch_msssim():
    x, y = _pair(2, 192, 256, 25.0)
    ours = ms_ssim_with(x, y, 255, STANDARD_MS_SSIM)
    torch.testing.assert_close(ours, reference_ms_ssim(x, y, data_range=255, size_average=False))
    torch.testing.assert_close(ms_ssim(x, y), ours)  # large images go through pytorch-msssim


@pytest.mark.parametrize(("chunk_values", "size"), [(metrics.CHUNK_VALUES, (176, 192)), (2 * 3 * 176 * 192, (176, 192)),
                                                     (metrics.CHUNK_VALUES, (181, 195))])
def test_batched_ms_ssim_against_one_reference_equals_pytorch_msssim_per_image(monkeypatch, chunk_values, size):
    """All images in one chunk (the default here) and chunks of 2, even sides (downsampled by sums) and odd
    ones (by padded pooling): within 2e-6 of one pytorch-msssim call per image (whose own values move by an
    ulp with the memory layout); on 8-bit images the sums change no bit against pooling."""
    monkeypatch.setattr(metrics, "CHUNK_VALUES", chunk_values)
    x, _ = _pair(1, *size, 0.0, seed=3)
    ys = torch.cat([_pair(1, *size, noise, seed=3)[1] for noise in (2.0, 25.0, 120.0)])
    expected = torch.cat([reference_ms_ssim(x, y[None], data_range=255, size_average=False) for y in ys])
    torch.testing.assert_close(ms_ssim_against(x, ys), expected, rtol=0, atol=2e-6)
    x, ys = x.round().to(torch.uint8), ys.round().to(torch.uint8)
    summed = ms_ssim_against(x, ys)
    monkeypatch.setattr(metrics, "_halve", lambda t: torch.nn.functional.avg_pool2d(t, 2, padding=[s % 2 for s in t.shape[2:]]))
    assert torch.equal(summed, ms_ssim_against(x, ys))
    with pytest.raises(ValueError, match="one reference shaped like"):
        ms_ssim_against(ys, ys)
    with pytest.raises(ValueError, match="at least 161 pixels"):
        ms_ssim_against(x[..., :160], ys[..., :160])


def _numpy_patch_ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """PATCH_MS_SSIM written out independently: 2-D window, SciPy convolution, float64."""
    coords = np.arange(3) - 1
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363])
    weights /= weights.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for xc, yc in zip(x.astype(np.float64), y.astype(np.float64)):
        factors = []
        for level in range(4):
            f = lambda a: convolve2d(a, win, mode="valid")  # noqa: E731
            mx, my = f(xc), f(yc)
            vx, vy, cov = f(xc * xc) - mx**2, f(yc * yc) - my**2, f(xc * yc) - mx * my
            cs = ((2 * cov + c2) / (vx + vy + c2)).mean()
            ssim = (((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * (2 * cov + c2) / (vx + vy + c2)).mean()
            factors.append(max(cs, 0) if level < 3 else max(ssim, 0))
            xc = xc.reshape(xc.shape[0] // 2, 2, xc.shape[1] // 2, 2).mean(axis=(1, 3))
            yc = yc.reshape(yc.shape[0] // 2, 2, yc.shape[1] // 2, 2).mean(axis=(1, 3))
        per_channel.append(np.prod(np.array(factors) ** weights))
    return float(np.mean(per_channel))


@pytest.mark.parametrize("noise", [5.0, 30.0, 80.0])
def test_patch_form_equals_an_independent_computation(noise):
    x, y = _pair(3, 32, 32, noise, seed=int(noise))
    ours = ms_ssim(x, y).double().numpy()
    expected = [_numpy_patch_ms_ssim(a.numpy(), b.numpy()) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    assert PATCH_MS_SSIM.min_side() == 17


def test_identical_images_score_infinity_and_one():
    x, _ = _pair(1, 32, 32, 0.0)
    assert psnr(x.numpy(), x.numpy()) == math.inf
    assert ms_ssim(x, x).item() == pytest.approx(1.0)
    assert ms_ssim_db(1.0) == math.inf
    big, _ = _pair(1, 200, 200, 0.0)
    assert ms_ssim(big, big).item() == pytest.approx(1.0)


def test_psnr_of_a_known_error():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 16, dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 256))
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (2, 300, 200, 3), dtype=np.uint8)  # 8-bit: an integer sum of squares, exact
    assert psnr(x, y) == psnr(x.astype(np.float32), y.astype(np.float32)) == psnr(torch.from_numpy(x), y.astype(float))
    assert psnr(y, y) == math.inf


def test_rd_auc_integrates_over_the_stated_range():
    bpp = np.arange(1, 17) * 0.125
    assert rd_auc(bpp, np.full(16, 0.9)) == pytest.approx(0.9 * 1.875)
    assert rd_auc(bpp, bpp) == pytest.approx((2.0**2 - 0.125**2) / 2)
    assert rd_auc(bpp[::-1], bpp[::-1], lo=0.5, hi=1.0) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="does not cover"):
        rd_auc(bpp[:4], bpp[:4])
