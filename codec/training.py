"""One training step and a validation pass, shared by ``rnncodec train`` and the sweeps."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from codec.image import to_input, to_pixels
from codec.losses import codec_loss
from codec.metrics import ms_ssim
from codec.model import RNNCodec


def _device(model: RNNCodec) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def train_step(model: RNNCodec, optimizer: torch.optim.Optimizer, pixels: Tensor, iterations: int,
               loss: str = "l1", *, amp: bool = False, grad_clip: float | None = None) -> float:
    """Forward, backward and optimizer step on a uint8 N×3×H×W batch; returns the loss.

    ``amp`` runs the forward pass under bfloat16 autocast (no loss scaling needed). A model
    converted with ``model.to(memory_format=torch.channels_last)`` gets channels-last input.
    """
    device = _device(model)
    x = to_input(pixels.to(device, non_blocking=True))
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last) and x.shape[-1] > 1:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    with _autocast(device, amp):
        out = model(x, iterations)
        value = codec_loss(loss, x, {k: [t.float() for t in v] for k, v in out.items()})
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value.item()


@torch.inference_mode()
def evaluate(model: RNNCodec, pixels: Tensor, iterations: int, batch_size: int = 256, amp: bool = False,
             keep: int = 0) -> dict[str, list]:
    """Evaluation-mode quality after each iteration on uint8 images, each a list of length
    ``iterations``: mean ``psnr`` (dB, per image on 8-bit RGB, then averaged), mean ``ms_ssim`` and
    mean absolute ``residual``; with ``keep`` > 0 also ``reconstructions``, the uint8
    reconstructions of the first ``keep`` images (at most one batch) after each iteration."""
    device = _device(model)
    was_training = model.training
    model.eval()
    sums = {k: np.zeros(iterations) for k in ("psnr", "ms_ssim", "residual")}
    kept: list[Tensor] = []
    try:
        for start in range(0, len(pixels), batch_size):
            ref = pixels[start : start + batch_size].to(device)
            with _autocast(device, amp):
                out = model(to_input(ref), iterations)
            for t, (x_hat, r) in enumerate(zip(out["x_hat"], out["residuals"])):
                rec = to_pixels(x_hat.float())
                mse = (rec.float() - ref.float()).square().flatten(1).mean(1)
                sums["psnr"][t] += (10 * torch.log10(255**2 / mse.clamp_min(1e-10))).sum().item()
                sums["ms_ssim"][t] += ms_ssim(rec.float(), ref.float(), data_range=255).sum().item()
                sums["residual"][t] += r.float().abs().flatten(1).mean(1).sum().item()
                if start == 0 and keep:
                    kept.append(rec[:keep].cpu())
    finally:
        model.train(was_training)
    result: dict[str, list] = {k: list(v / len(pixels)) for k, v in sums.items()}
    if keep:
        result["reconstructions"] = kept
    return result


def random_patches(images: list[np.ndarray], count: int, rng: np.random.Generator, size: int = 32) -> Tensor:
    """``count`` random ``size``×``size`` crops (uint8 N×3×size×size) from H×W×3 images,
    each image chosen with probability proportional to its area."""
    areas = np.array([(im.shape[0] - size + 1) * (im.shape[1] - size + 1) for im in images], dtype=float)
    which = rng.choice(len(images), size=count, p=areas / areas.sum())
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(which):
        im = images[k]
        y = rng.integers(0, im.shape[0] - size + 1)
        x = rng.integers(0, im.shape[1] - size + 1)
        out[i] = im[y : y + size, x : x + size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
