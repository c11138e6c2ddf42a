"""Which of the recipe's choices make it train as the 1zb port's (``peer_recipe.py``)? A run trains our network
with the default recipe, with some of its choices turned back into those we used before 2026-11-27
(``--change``), or the peer's network and step (``--peer``), and prints JSON: held-out PSNR after each
iteration on Kodak crops, at every ``--eval-every`` steps, with the deterministic binarizer (as ``compress``
codes) and the stochastic one (as training sees it).

Changes: ``zero-init`` (the output convolution starts at zero: a mid-grey reconstruction), ``full`` (each
iteration adds tanh(·), ``output_scale`` 1, instead of tanh(·)/2), ``cosine`` (cosine learning-rate schedule
instead of a constant rate), ``bias`` (biases, which the peer has not). All four give the old recipe.

    python benchmarks/recipe_ablation.py --images ../shared/data/kodak [--change zero-init full cosine bias]
        [--peer] [--steps 600] [--width 0.125] [--batch 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from peer_1zb import LR, PeerCodec, peer_step  # noqa: E402
from peer_recipe import held_out, psnr_curve  # noqa: E402

from rnncodec.codec.image import to_input  # noqa: E402
from rnncodec.codec.model import CodecConfig, RNNCodec  # noqa: E402
from rnncodec.codec.training import PatchStream, TrainConfig, Trainer  # noqa: E402

CHANGES = ("zero-init", "full", "cosine", "bias")


def build(args: argparse.Namespace):
    """The model and a function taking n training steps on ``batches``."""
    torch.manual_seed(args.seed)
    if args.peer:
        model = PeerCodec(args.width)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        return model, lambda batches, n: [peer_step(model, optimizer, next(batches), args.iterations)
                                          for _ in range(n)]
    model = RNNCodec(CodecConfig(width=args.width, bias="bias" in args.change,
                                 output_scale=1.0 if "full" in args.change else 0.5))
    if "zero-init" in args.change:
        nn.init.zeros_(model.decoder.conv_out.weight)
        if model.decoder.conv_out.bias is not None:
            nn.init.zeros_(model.decoder.conv_out.bias)
    trainer = Trainer(model, TrainConfig(iterations=args.iterations, lr=args.lr, total_steps=args.steps,
                                         lr_schedule="cosine" if "cosine" in args.change else "none"))
    return model, trainer.run


@torch.no_grad()
def curves(model: nn.Module, test: torch.Tensor, iterations: int) -> dict[str, list[float]]:
    out = {}
    for name, training in (("deterministic", False), ("stochastic", True)):
        model.train(training)
        torch.manual_seed(123)
        x_hat = model(to_input(test), iterations)
        out[name] = psnr_curve(x_hat if isinstance(x_hat, list) else x_hat["x_hat"], test)
    model.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="held-out images (Kodak: never trained on)")
    parser.add_argument("--data", default="sample", help="training patches: sample, a folder, or prepared shards")
    parser.add_argument("--change", nargs="*", default=[], choices=CHANGES)
    parser.add_argument("--peer", action="store_true", help="train the peer's network and step instead")
    parser.add_argument("--test-images", type=int, default=3)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="torch seed (initialisation, binarizer noise)")
    args = parser.parse_args()
    test = held_out(args.images, args.test_images, args.crop)
    model, train = build(args)
    batches = iter(PatchStream(args.data, args.batch, 0))  # the same patches for every run
    result, start = {**vars(args), "psnr_per_iteration": {}}, time.perf_counter()
    for done in range(args.eval_every, args.steps + 1, args.eval_every):
        train(batches, args.eval_every)
        result["psnr_per_iteration"][done] = curves(model, test, args.iterations)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
