"""What each iteration of a checkpoint adds, against the bundled model measured in the same run.

Per iteration, in evaluation mode, on random 32×32 patches of ``--images`` (default: the scikit-image
sample photographs; never tune on Kodak): mean PSNR (dB), the mean |residual| the encoder sees, the
mean |increment| the decoder adds, the binarizer's mean |tanh| before the sign, and per recurrent
layer the mean |state| (an LSTM's cell state c, a GRU's h) with the share of saturated units
(|c| > 2, where tanh(c) > 0.96; GRU: |h| > 0.96). Saturated units no longer respond to their
input; in the first bundled model the decoder's third layer had 42% of its cells saturated from
iteration 12 on, where the iterations stopped adding quality (``codec/pretrained/README.md``).

    python benchmarks/late_iterations.py [--checkpoint CKPT] [--images DIR] [--patches 512]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from rnncodec.codec import load_checkpoint
from rnncodec.codec.image import to_input, to_pixels
from rnncodec.codec.model import ConvLSTMCell, RNNCodec
from rnncodec.codec.options import MAX_ITERATIONS
from rnncodec.codec.training import random_patches
from rnncodec.data import sample_images
from rnncodec.evaluation.rd import load_images


@torch.inference_mode()
def profile(model: RNNCodec, pixels: torch.Tensor, iterations: int = MAX_ITERATIONS) -> dict[str, Any]:
    model.eval()
    states: dict[str, list[tuple[float, float]]] = {}
    tanh: list[float] = []
    hooks = [model.binarizer.conv.register_forward_hook(lambda m, i, o: tanh.append(torch.tanh(o).abs().mean().item()))]
    layers = [(f"E-RNN {k + 1}", r) for k, r in enumerate(model.encoder.rnns)]
    layers += [(f"D-RNN {k + 1}", r) for k, r in enumerate(model.decoder.rnns)]
    for name, rnn in layers:
        lstm = isinstance(rnn, ConvLSTMCell)

        def record(m: Any, i: Any, out: Any, name: str = name, lstm: bool = lstm) -> None:
            state = out[1][1] if lstm else out[1]
            states.setdefault(name, []).append((state.abs().mean().item(),
                                                (state.abs() > (2 if lstm else 0.96)).float().mean().item()))
        hooks.append(rnn.register_forward_hook(record))
    try:
        x = to_input(pixels)
        out = model(x, iterations)
    finally:
        for h in hooks:
            h.remove()
    rows, previous = [], torch.zeros_like(x)
    for t in range(iterations):
        x_hat = out["x_hat"][t]
        mse = (to_pixels(x_hat).float() - pixels.float()).square().flatten(1).mean(1).clamp_min(1e-10)
        seen = x if t == 0 else out["residuals"][t - 1]
        rows.append({"iteration": t + 1, "psnr": round((10 * torch.log10(255**2 / mse)).mean().item(), 3),
                     "residual_abs": round(seen.abs().mean().item(), 5),
                     "increment_abs": round((x_hat - previous).abs().mean().item(), 5),
                     "binarizer_abs_tanh": round(tanh[t], 3),
                     "state_abs": {n: round(v[t][0], 3) for n, v in states.items()},
                     "saturated": {n: round(v[t][1], 3) for n, v in states.items()}})
        previous = x_hat
    return {"config": model.config.to_dict(), "iterations": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint to profile (default: only the bundled model)")
    p.add_argument("--images", help="folder of photographs to crop patches from (default: scikit-image's samples)")
    p.add_argument("--patches", type=int, default=512, help="random 32×32 patches (default 512)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    images = [im for _, im in (load_images(args.images) if args.images else sample_images())]
    pixels = random_patches(images, args.patches, np.random.default_rng(args.seed))
    result = {"patches": args.patches, "images": args.images or "scikit-image samples",
              "bundled": profile(load_checkpoint(), pixels)}
    if args.checkpoint:
        result["checkpoint"] = {"path": args.checkpoint, **profile(load_checkpoint(args.checkpoint), pixels)}
        result["psnr_gain_db"] = [round(a["psnr"] - b["psnr"], 3) for a, b in
                                  zip(result["checkpoint"]["iterations"], result["bundled"]["iterations"])]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
