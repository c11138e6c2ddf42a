"""Quality of one decoded image against its original, as the published Kodak curves measure it: PSNR
on 8-bit RGB and the standard 5-scale MS-SSIM (pytorch-msssim, data range 255)."""

from __future__ import annotations

import numpy as np
import torch

from rnncodec.codec.errors import CodecError
from rnncodec.codec.metrics import STANDARD_MS_SSIM, ms_ssim, ms_ssim_db, psnr

MIN_MS_SSIM_SIDE = (STANDARD_MS_SSIM.win_size - 1) * 16 + 1  # pytorch-msssim's 5-scale limit


def image_metrics(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """PSNR (dB, 8-bit RGB), standard 5-scale MS-SSIM (data range 255) and MS-SSIM in dB of one
    decoded image against its original; identical images give ∞, 1.0 and ∞."""
    if original.shape != decoded.shape:
        raise CodecError(f"decoded image is {decoded.shape}, the original {original.shape}")
    a = torch.from_numpy(np.array(original, dtype=np.float32)).permute(2, 0, 1)[None]
    b = torch.from_numpy(np.array(decoded, dtype=np.float32)).permute(2, 0, 1)[None]
    if min(a.shape[-2:]) < MIN_MS_SSIM_SIDE:
        raise CodecError(f"standard 5-scale MS-SSIM needs at least {MIN_MS_SSIM_SIDE} pixels a side, "
                         f"got {original.shape[1]}×{original.shape[0]}")
    value = 1.0 if np.array_equal(original, decoded) else min(1.0, float(ms_ssim(a, b, data_range=255.0)[0]))
    return {"psnr-rgb": psnr(original, decoded), "ms-ssim-rgb": value, "ms-ssim-db": ms_ssim_db(value)}
