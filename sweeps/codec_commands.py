"""``rnncodec train``, ``rnncodec compress`` and ``rnncodec decompress``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import codec
from codec.image import list_images, write_atomic
from codec.model import MAX_ITERATIONS
from codec.training import random_patches
from data import open_split, sample_images
from data.loader import BatchLoader
from sweeps.arguments import positive

console = Console(stderr=True, soft_wrap=True)


def _iterations(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_ITERATIONS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_ITERATIONS} (0.125 bpp each)")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one codec on random 32×32 patches of a folder of images",
                       description="Train one codec (no Ray) on random 32×32 patches of the images in a "
                       "folder, or of the built-in sample photographs, and write a checkpoint.")
    p.add_argument("--data", required=True, metavar="DIR|SHARDS|sample",
                   help="folder of PNG/JPEG images (random crops), a folder written by `rnncodec data prepare` "
                   "(its train split, shuffled per epoch), or 'sample' for the photographs shipped with scikit-image")
    p.add_argument("--out", required=True, type=Path, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--cell", choices=codec.CELLS, default="lstm", help="recurrent cell (default: lstm)")
    p.add_argument("--mode", choices=codec.MODES, default="additive", help="reconstruction mode (default: additive)")
    p.add_argument("--width", type=positive(float), default=0.25,
                   help="channel multiplier; 1 is the paper's 35M-parameter model (default: 0.25, CPU-friendly)")
    p.add_argument("--iterations", type=_iterations, default=8, help="iterations per patch, 0.125 bpp each (default: 8)")
    p.add_argument("--batch-size", type=positive(int), default=32, help="patches per step (default: 32)")
    p.add_argument("--steps", type=positive(int), default=500, help="optimizer steps (default: 500)")
    p.add_argument("--loss", choices=codec.LOSSES, default="l1", help="training loss (default: l1, the paper's)")
    p.add_argument("--lr", type=positive(float), default=5e-4, help="Adam learning rate (default: 5e-4)")
    p.add_argument("--activation", choices=("none", "leaky-relu"), default="none",
                   help="non-linearity after E-Conv and D-Conv 1 (default: none, as the paper)")
    p.add_argument("--save-every", type=positive(int), default=500, metavar="STEPS",
                   help="also write the checkpoint every STEPS steps (default: 500)")
    p.add_argument("--init", type=Path, metavar="CKPT",
                   help="start from this checkpoint's weights (same cell and width; the mode may differ)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (useful on GPUs)")
    p.set_defaults(func=train)

    p = sub.add_parser("compress", help="compress an image to an rnncodec file",
                       description="Compress an image with a trained codec. Each iteration adds 0.125 bpp.")
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, …)")
    p.add_argument("out", type=Path, help="output bitstream file")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="trained model checkpoint (default: the model bundled with rnncodec)")
    p.add_argument("--iterations", type=_iterations, default=8, help="iterations to code (default: 8, i.e. 1 bpp)")
    p.set_defaults(func=compress)

    p = sub.add_parser("decompress", help="decompress an rnncodec file to PNG",
                       description="Decode an rnncodec file, optionally only its first K iterations.")
    p.add_argument("input", type=Path, help="bitstream written by `rnncodec compress`")
    p.add_argument("out", type=Path, help="output PNG")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="the checkpoint that compressed it (default: the model bundled with rnncodec)")
    p.add_argument("--iterations", type=_iterations, default=None, help="decode only the first K iterations")
    p.set_defaults(func=decompress)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise codec.CodecError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise codec.CodecError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


class _PatchStream:
    """Endless uint8 batches of 32×32 patches, plus a fixed held-out batch, from ``--data``."""

    def __init__(self, spec: str, batch_size: int, seed: int):
        if (Path(spec) / "manifest.json").is_file():
            self.loader = BatchLoader(open_split(spec, "train"), batch_size, seed=seed)
            with open_split(spec, "val") as val:
                count = min(256, len(val))
                self.held_out = torch.from_numpy(val.images(np.linspace(0, len(val) - 1, count).astype(np.int64)))
            self.description = f"{len(self.loader.reader):,} prepared patches"
        else:
            self.loader = None
            self.images = _training_images(spec)
            self.rng = np.random.default_rng(seed)
            self.batch_size = batch_size
            self.held_out = random_patches(self.images, 256, np.random.default_rng(seed + 1))
            self.description = f"random crops of {len(self.images)} images"

    def __iter__(self):
        while True:
            if self.loader is None:
                yield random_patches(self.images, self.batch_size, self.rng)
            else:
                yield from self.loader


def _training_images(spec: str) -> list[np.ndarray]:
    if spec == "sample":
        images = [im for _, im in sample_images()]
    else:
        images = [codec.load_image(p) for p in list_images(spec)]
    images = [im for im in images if min(im.shape[:2]) >= 32]
    if not images:
        raise codec.CodecError(f"{spec} holds no image of at least 32×32 pixels to train on")
    return images


def train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    device = _device(args.device)
    stream = _PatchStream(args.data, args.batch_size, args.seed)
    config = codec.CodecConfig(cell=args.cell, mode=args.mode, width=args.width, activation=args.activation)
    model = codec.RNNCodec(config)
    fresh = codec.warm_start(model, args.init) if args.init else []
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"training {args.cell}/{args.mode} width {args.width} ({params:,} parameters) on "
                  f"{stream.description}, {args.iterations} iterations, batch {args.batch_size}, {device}")
    if args.init:
        console.print(f"weights from {args.init}" + (f"; new: {', '.join(fresh)}" if fresh else ""))
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=args.steps, loss=float("nan"))
        for step, batch in zip(range(1, args.steps + 1), stream):
            loss = codec.train_step(model, optimizer, batch, args.iterations, args.loss, amp=args.amp)
            schedule.step()
            progress.update(task, advance=1, loss=loss)
            if step % args.save_every == 0 or step == args.steps:
                codec.save_checkpoint(args.out, model, steps=step, loss=args.loss, data=str(args.data),
                                      init=str(args.init or ""))
                psnr = codec.evaluate(model, stream.held_out, args.iterations)["psnr"]
                progress.console.print(f"step {step}: held-out PSNR (dB) at 0.125..{0.125 * args.iterations:g} "
                                       f"bpp: {' '.join(f'{v:.2f}' for v in psnr)}")
    console.print(f"wrote {args.out} after {time.perf_counter() - start:.0f} s")
    return 0


def compress(args: argparse.Namespace) -> int:
    image = codec.load_image(args.image)
    model = codec.load_checkpoint(args.checkpoint)
    data = codec.compress(model, image, args.iterations)
    write_atomic(args.out, data)
    pixels = image.shape[0] * image.shape[1]
    console.print(f"wrote {args.out}: {len(data):,} bytes, {len(data) * 8 / pixels:.4f} bpp "
                  f"({args.iterations} iterations of {image.shape[1]}×{image.shape[0]})")
    return 0


def decompress(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        raise codec.CodecError(f"no such file: {args.input}")
    model = codec.load_checkpoint(args.checkpoint)
    image = codec.decompress(model, args.input.read_bytes(), args.iterations)
    codec.save_png(args.out, image)
    console.print(f"wrote {args.out}: {image.shape[1]}×{image.shape[0]}")
    return 0
