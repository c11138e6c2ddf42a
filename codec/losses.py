"""Training losses over all iterations of the codec.

``l1`` is the paper's loss: the mean absolute residual summed over iterations. ``mse`` is the
same with squared residuals. ``psnr`` is −Σₜ of the batch's PSNR (dB, of its mean squared error)
after iteration t: the area under the PSNR–rate curve. Its gradient weighs iteration t by 1/MSEₜ, so the late
iterations' small residuals count as much as the early ones' large residuals; under ``l1`` every
decoder output also enters all later residuals, and the late iterations learned to add almost
nothing (``codec/pretrained/README.md``). ``ms-ssim`` sums 1 − MS-SSIM of each iteration's
reconstruction (what the seed study trained with; on 32×32 patches it is ``metrics.PATCH_MS_SSIM``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import ms_ssim
from rnncodec.codec.options import LOSSES

MSE_FLOOR = 1e-10


def codec_loss(name: str, x: Tensor, out: dict[str, list[Tensor]]) -> Tensor:
    """The loss ``name`` of the model output ``out`` for input ``x`` (both in [-0.5, 0.5])."""
    if name == "l1":
        return sum(r.abs().mean() for r in out["residuals"])
    if name == "mse":
        return sum(r.square().mean() for r in out["residuals"])
    if name == "psnr":
        return sum(10 * torch.log10(r.square().mean() + MSE_FLOOR) for r in out["residuals"])
    if name == "ms-ssim":
        target = x + 0.5
        return sum(1 - ms_ssim(x_hat.clamp(-0.5, 0.5) + 0.5, target, data_range=1.0).mean()
                   for x_hat in out["x_hat"])
    raise CodecError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
