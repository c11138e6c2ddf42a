"""Moving between 8-bit pixels and the model's input range. Reading and writing image files follows
one rule for the whole project: :mod:`rnncodec.data.images`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnncodec.codec.options import STRIDE


def to_input(pixels: Tensor) -> Tensor:
    """uint8 N×3×H×W → float in [-0.5, 0.5], the model's input range."""
    return pixels.float().div_(255).sub_(0.5)


def to_pixels(x: Tensor) -> Tensor:
    """Model range → uint8, rounding to the nearest level."""
    return x.add(0.5).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def pad_to_stride(x: Tensor, multiple: int = STRIDE) -> Tensor:
    """Pad N×C×H×W on the bottom and right by edge replication to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
