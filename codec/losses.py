"""Training losses over all iterations of the codec.

``l1`` is the paper's loss: the mean absolute residual summed over iterations. ``mse`` is the
same with squared residuals. ``psnr`` is −Σₜ of the batch's PSNR (dB, of its mean squared error)
after iteration t: the area under the PSNR–rate curve. Its gradient weighs iteration t by 1/MSEₜ, so the late
iterations' small residuals count as much as the early ones' large residuals; under ``l1`` every
decoder output also enters all later residuals, and the late iterations learned to add almost
nothing (``codec/pretrained/README.md``). ``ms-ssim`` sums 1 − MS-SSIM of each iteration's
reconstruction (what the seed study trained with; on 32×32 patches it is ``metrics.PATCH_MS_SSIM``).

``growth`` γ weighs iteration t's term by γᵗ⁻¹ (scaled so that the weights sum to the iteration count).
Under the additive reconstruction the increment of iteration s enters every later residual, so with equal
weights it counts in T − s + 1 terms: the first iteration's 16 times, the last one's once. γ > 1 evens
that out (γ = 1.25 brings the ratio from 16:1 to about 5:1 at 16 iterations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import ms_ssim
from rnncodec.codec.options import LOSSES

MSE_FLOOR = 1e-10


def iteration_weights(iterations: int, growth: float = 1.0) -> list[float]:
    """The weight of each iteration's loss term: γᵗ⁻¹, scaled to sum to ``iterations``."""
    raw = [growth ** t for t in range(iterations)]
    return [iterations * w / sum(raw) for w in raw]


def codec_loss(name: str, x: Tensor, out: dict[str, list[Tensor]], growth: float = 1.0) -> Tensor:
    """The loss ``name`` of the model output ``out`` for input ``x`` (both in [-0.5, 0.5]), its
    iterations weighted by ``growth`` (module docstring)."""
    if name == "l1":
        terms = [r.abs().mean() for r in out["residuals"]]
    elif name == "mse":
        terms = [r.square().mean() for r in out["residuals"]]
    elif name == "psnr":
        terms = [10 * torch.log10(r.square().mean() + MSE_FLOOR) for r in out["residuals"]]
    elif name == "ms-ssim":
        target = x + 0.5
        terms = [1 - ms_ssim(x_hat.clamp(-0.5, 0.5) + 0.5, target, data_range=1.0).mean() for x_hat in out["x_hat"]]
    else:
        raise CodecError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return sum(w * term for w, term in zip(iteration_weights(len(terms), growth), terms))
