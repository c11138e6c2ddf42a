"""Quality of decoded images against their original, as the published Kodak curves measure it: PSNR
on 8-bit RGB and the standard 5-scale MS-SSIM (pytorch-msssim, data range 255)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import STANDARD_MS_SSIM, ms_ssim_against, ms_ssim_db, psnr

MIN_MS_SSIM_SIDE = STANDARD_MS_SSIM.min_side()  # pytorch-msssim's 5-scale limit


def _planes(images: Sequence[np.ndarray]) -> torch.Tensor:
    """N H×W×3 uint8 images as an N×3×H×W uint8 tensor (a view of their stack)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def image_metrics_many(original: np.ndarray, decoded: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """:func:`image_metrics` of each decoded image against one original, in one batched MS-SSIM call
    whose reference statistics are computed once; the values are those of one call per image."""
    for d in decoded:
        if d.shape != original.shape:
            raise CodecError(f"decoded image is {d.shape}, the original {original.shape}")
    if min(original.shape[:2]) < MIN_MS_SSIM_SIDE:
        raise CodecError(f"standard 5-scale MS-SSIM needs at least {MIN_MS_SSIM_SIDE} pixels a side, "
                         f"got {original.shape[1]}×{original.shape[0]}")
    if not decoded:
        return []
    values = ms_ssim_against(_planes([original]), _planes(decoded), data_range=255.0).tolist()
    out = []
    for d, v in zip(decoded, values):
        v = 1.0 if np.array_equal(original, d) else min(1.0, v)
        out.append({"psnr-rgb": psnr(original, d), "ms-ssim-rgb": v, "ms-ssim-db": ms_ssim_db(v)})
    return out


def image_metrics(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """PSNR (dB, 8-bit RGB), standard 5-scale MS-SSIM (data range 255) and MS-SSIM in dB of one
    decoded image against its original; identical images give ∞, 1.0 and ∞."""
    return image_metrics_many(original, [decoded])[0]
