"""Training losses over all iterations of the codec.

``l1`` is the paper's loss: the mean absolute residual summed over iterations. ``mse`` is the
same with squared residuals. ``ms-ssim`` sums 1 − MS-SSIM of each iteration's reconstruction
(what the seed study trained with; on 32×32 patches it is ``metrics.PATCH_MS_SSIM``).
"""

from __future__ import annotations

from torch import Tensor

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import ms_ssim
from rnncodec.codec.options import LOSSES


def codec_loss(name: str, x: Tensor, out: dict[str, list[Tensor]]) -> Tensor:
    """The loss ``name`` of the model output ``out`` for input ``x`` (both in [-0.5, 0.5])."""
    if name == "l1":
        return sum(r.abs().mean() for r in out["residuals"])
    if name == "mse":
        return sum(r.square().mean() for r in out["residuals"])
    if name == "ms-ssim":
        target = x + 0.5
        return sum(1 - ms_ssim(x_hat.clamp(-0.5, 0.5) + 0.5, target, data_range=1.0).mean()
                   for x_hat in out["x_hat"])
    raise CodecError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
