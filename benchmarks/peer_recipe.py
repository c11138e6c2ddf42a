"""Equal-compute check: our training recipe against the 1zb port's (``peer_1zb.py``: its network,
loss, optimizer and schedule) on the same patches, width, batch and number of steps; held-out PSNR
after each iteration on images neither trained on. Prints JSON with both curves.

Ours: ``RNNCodec`` with its defaults (additive LSTM; since 2026-11-27 tanh/2 per iteration, no biases, the
output layer randomly initialised) trained by ``Trainer`` with its defaults: L1 summed over iterations, Adam
at a constant ``--lr``. Peer: mean over iterations of mean
|residual|, Adam at 5e-4; its MultiStepLR halves at epochs 3, 10, … of its data set, which a run this
short never reaches, so its rate stays 5e-4. Both draw the same random 32×32 crops from the sample
photographs (``--data sample``) or a folder of images, seeded alike.

    python benchmarks/peer_recipe.py --images ../shared/data/kodak [--steps 1200] [--width 0.25] [--cuda-graph]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peer_1zb import LR, PeerCodec, peer_step  # noqa: E402

from rnncodec.codec.image import to_input, to_pixels  # noqa: E402
from rnncodec.codec.model import CodecConfig, RNNCodec  # noqa: E402
from rnncodec.codec.training import PatchStream, TrainConfig, Trainer  # noqa: E402
from rnncodec.evaluation.rd import load_images  # noqa: E402


def held_out(folder: str, count: int, crop: int) -> torch.Tensor:
    """The central ``crop``×``crop`` window of the first ``count`` images, uint8 N×3×crop×crop."""
    images = [im for _, im in load_images(folder, limit=count, crop=crop)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def psnr_curve(reconstructions: list[torch.Tensor], pixels: torch.Tensor) -> list[float]:
    """Mean per-image PSNR (8-bit RGB) after each iteration."""
    ref = pixels.float()
    curve = []
    for x_hat in reconstructions:
        mse = (to_pixels(x_hat.float()).float() - ref).square().flatten(1).mean(1)
        curve.append(round(float((10 * torch.log10(255**2 / mse)).mean()), 3))
    return curve


def train(recipe: str, args: argparse.Namespace, device: torch.device, test: torch.Tensor) -> dict:
    torch.manual_seed(args.seed)
    batches = iter(PatchStream(args.data, args.batch, args.seed))
    if recipe == "peer":
        model = PeerCodec(args.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)

        def step(n: int) -> None:
            for _ in range(n):
                peer_step(model, optimizer, next(batches).to(device), args.iterations)
    else:
        model = RNNCodec(CodecConfig(width=args.width)).to(device)
        trainer = Trainer(model, TrainConfig(iterations=args.iterations, lr=args.lr, total_steps=args.steps,
                                             cuda_graph=args.cuda_graph))

        def step(n: int) -> None:
            trainer.run(batches, n)

    start, curves = time.perf_counter(), {}
    for done in range(args.eval_every, args.steps + 1, args.eval_every):
        step(args.eval_every)
        model.eval()
        with torch.no_grad():
            x = to_input(test.to(device))
            out = model(x, args.iterations)
            curves[done] = psnr_curve(out if recipe == "peer" else out["x_hat"], test.to(device))
        model.train()
    return {"seconds": round(time.perf_counter() - start, 1), "psnr_per_iteration": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="held-out images (Kodak: never trained on)")
    parser.add_argument("--data", default="sample", help="training patches: sample, a folder, or prepared shards")
    parser.add_argument("--test-images", type=int, default=6)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="our recipe's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="our steps replayed as CUDA graphs (same losses, faster)")
    args = parser.parse_args()
    device = torch.device(args.device)
    test = held_out(args.images, args.test_images, args.crop)
    result = {k: v for k, v in vars(args).items() if k != "device"}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for recipe in ("ours", "peer"):
        result[recipe] = train(recipe, args, device, test)
    last = args.steps - args.steps % args.eval_every
    ours, peer = result["ours"]["psnr_per_iteration"][last], result["peer"]["psnr_per_iteration"][last]
    result["ours_minus_peer_db"] = [round(a - b, 3) for a, b in zip(ours, peer)]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
