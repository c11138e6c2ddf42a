"""The training loop, shared by ``rnncodec train`` and every sweep trial: optimizer, learning-rate
schedule, bfloat16 autocast, gradient clipping, the step itself, and the validation pass."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnncodec.codec.errors import CodecError
from rnncodec.codec.image import to_input, to_pixels
from rnncodec.codec.losses import codec_loss
from rnncodec.codec.metrics import ms_ssim
from rnncodec.codec.model import RNNCodec
from rnncodec.codec.options import LOSS_GROWTH_RANGE, LOSSES, LR_SCHEDULES, MAX_TRAIN_ITERATIONS, OPTIMIZERS


@dataclass(frozen=True)
class TrainConfig:
    """How a codec is optimised. ``total_steps`` is the length the schedule spans."""

    iterations: int = 8
    loss: str = "l1"
    loss_growth: float = 1.0  # iteration t's loss term weighs loss_growth ** (t - 1) (losses.codec_loss)
    optimizer: str = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_schedule: str = "none"  # none (constant, as the 1zb port), cosine over total_steps, or step (÷10 at 2/3 of it)
    total_steps: int = 1
    grad_clip: float | None = None
    amp: bool = False  # bfloat16 autocast where it runs natively (bf16_native)
    deterministic: bool = False
    cuda_graph: bool = False  # on CUDA, replay the whole step as one CUDA graph (GraphedStep)

    def __post_init__(self) -> None:
        for name, value, options in (("loss", self.loss, LOSSES), ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("lr_schedule", self.lr_schedule, LR_SCHEDULES)):
            if value not in options:
                raise CodecError(f"{name} {value!r} is not one of {', '.join(options)}")
        if not 1 <= self.iterations <= MAX_TRAIN_ITERATIONS:
            raise CodecError(f"iterations must be in 1..{MAX_TRAIN_ITERATIONS}, got {self.iterations}")
        low, high = LOSS_GROWTH_RANGE
        if not low <= self.loss_growth <= high:
            raise CodecError(f"loss_growth {self.loss_growth} is outside [{low:g}, {high:g}]; 1 weighs every "
                             "iteration alike")
        if self.total_steps < 1 or not 0 < self.lr < math.inf:
            raise CodecError("total_steps and lr must be positive (and lr finite)")
        if not 0 <= self.weight_decay < math.inf:
            raise CodecError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise CodecError(f"grad_clip must be a finite positive norm, got {self.grad_clip}")
        if self.cuda_graph and self.optimizer == "sgd":
            raise CodecError("cuda_graph needs the adam or adamw optimizer (their capturable form); "
                             "drop cuda_graph or change the optimizer")


def set_deterministic(on: bool) -> None:
    """Ask torch for deterministic kernels (GPU runs then reproduce bit for bit, somewhat slower). CPU
    runs of this codec are deterministic either way."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    if on != torch.are_deterministic_algorithms_enabled():  # setting it imports torch's compiler: ~1 s
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def bf16_native(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively: on CUDA, or on a CPU with AVX512-BF16 or AMX (oneDNN).
    On this project's Zen 4 CPU it makes the paper-size training step 1.7× faster (width 1.0), 1.2× at
    width 0.125 (``benchmarks/train_throughput.py``)."""
    return device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _device(model: RNNCodec) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, amp: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache) if amp else contextlib.nullcontext()


def _step(model: RNNCodec, optimizer: torch.optim.Optimizer, pixels: Tensor, iterations: int, loss: str,
          amp: bool, grad_clip: float | None, cache: bool = True, loss_growth: float = 1.0) -> Tensor:
    device = _device(model)
    x = to_input(pixels.to(device, non_blocking=True))
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last) and x.shape[-1] > 1:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    with _autocast(device, amp, cache):
        out = model(x, iterations)
        value = codec_loss(loss, x, {k: [t.float() for t in v] for k, v in out.items()}, loss_growth)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value.detach()


def train_step(model: RNNCodec, optimizer: torch.optim.Optimizer, pixels: Tensor, iterations: int,
               loss: str = "l1", *, amp: bool = False, grad_clip: float | None = None,
               loss_growth: float = 1.0) -> float:
    """Forward, backward and optimizer step on a uint8 N×3×H×W batch; returns the loss.

    ``amp`` runs the forward pass under bfloat16 autocast (no loss scaling needed). A model
    converted with ``model.to(memory_format=torch.channels_last)`` gets channels-last input.
    """
    return _step(model, optimizer, pixels, iterations, loss, amp, grad_clip, loss_growth=loss_growth).item()


class GraphedStep:
    """``train_step`` captured once as a CUDA graph (forward, loss, backward, clipping, optimizer) and
    replayed for every batch of the captured shape; batches of another shape take the eager step.

    At the paper's batch of 32 the eager step is bound by launching its kernels from Python (about
    5,000 operator calls a step at 4 iterations, counted on the CPU), not by the GPU: on an H200 a step
    of batch 128 took as long as one of 32. A replay launches them all at once: 1.9× the eager step
    there in fp32, 3.5× with bf16 (``benchmarks/train_throughput.py``), with the same losses. Needs
    an optimizer built with ``capturable=True`` and a tensor learning rate (``Trainer`` does both),
    since a replay cannot read Python numbers.
    """

    WARMUP = 3  # eager steps on a side stream before the capture, as CUDA's capture requires

    def __init__(self, model: RNNCodec, optimizer: torch.optim.Optimizer, config: TrainConfig, amp: bool):
        self.model, self.optimizer, self.config, self.amp = model, optimizer, config, amp
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def _eager(self, pixels: Tensor, cache: bool = True) -> Tensor:
        c = self.config
        return _step(self.model, self.optimizer, pixels, c.iterations, c.loss, self.amp, c.grad_clip, cache,
                     c.loss_growth)

    def __call__(self, pixels: Tensor) -> float:
        if self.graph is None and self.warm < self.WARMUP:
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                value = self._eager(pixels)
            main.wait_stream(side)
            self.warm += 1
            return value.item()
        if self.graph is None:
            self.pixels = pixels.to(_device(self.model), copy=True)
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._eager(self.pixels, cache=False)  # autocast's cache breaks capture
        elif pixels.shape != self.pixels.shape:
            return self._eager(pixels).item()
        else:
            self.pixels.copy_(pixels, non_blocking=True)
        self.graph.replay()  # a capture only records: the step it captured runs here too
        return self.loss.item()


class Trainer:
    """A model, its optimizer and schedule, and the counters of a run: ``run(batches, n)`` takes n steps.

    ``state_dict()`` holds everything needed to continue exactly (with the torch RNG state, which the
    caller saves, since the binarizer is stochastic).
    """

    def __init__(self, model: RNNCodec, config: TrainConfig):
        self.model, self.config = model, config
        set_deterministic(config.deterministic)
        device = _device(model)
        self.graphed = config.cuda_graph and device.type == "cuda"
        params, lr, wd = model.parameters(), config.lr, config.weight_decay
        # fused: one kernel for every parameter: on the CPU 17 ms a step, not 100 (width 1.0)
        adam = {"fused": True, "capturable": self.graphed}
        if config.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=wd, **adam)
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd, **adam)
        else:
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        self._lr_kind()
        self.amp = config.amp and bf16_native(device)
        if self.amp and device.type == "cuda":  # channels_last adds 4% to bf16 on an H100
            model.to(memory_format=torch.channels_last)
        self._train_step = (GraphedStep(model, self.optimizer, config, self.amp) if self.graphed else
                            lambda pixels: train_step(model, self.optimizer, pixels, config.iterations, config.loss,
                                                      amp=self.amp, grad_clip=config.grad_clip,
                                                      loss_growth=config.loss_growth))
        self.steps, self.samples_seen, self.train_time = 0, 0, 0.0

    def _lr_kind(self) -> None:
        """A graphed step reads the learning rate from a tensor on the device (the schedule fills it in
        place); an eager one from a number; the schedule's own records stay numbers. Checkpoints of
        either kind load into both."""
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=_device(self.model)) if self.graphed else lr
            group["initial_lr"] = float(group["initial_lr"])
            if "capturable" in group:
                group["capturable"] = self.graphed
        self.schedule.base_lrs = [float(lr) for lr in self.schedule.base_lrs]
        self.schedule._last_lr = [float(lr) for lr in self.schedule._last_lr]

    def _factor(self, step: int) -> float:
        total, kind = self.config.total_steps, self.config.lr_schedule
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if kind == "step":
            return 0.1 if step >= 2 * total // 3 else 1.0
        return 1.0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def run(self, batches: Iterator[Tensor], steps: int, on_step: Callable[[float], None] | None = None) -> list[float]:
        """Take ``steps`` optimizer steps on batches drawn from ``batches``; returns their losses."""
        losses = []
        for _ in range(steps):
            batch = next(batches)
            start = time.perf_counter()
            losses.append(self._train_step(batch))
            self.train_time += time.perf_counter() - start
            self.schedule.step()
            self.steps += 1
            self.samples_seen += len(batch)
            if on_step is not None:
                on_step(losses[-1])
        return losses

    def evaluate(self, pixels: Tensor, keep: int = 0) -> dict[str, list]:
        return evaluate(self.model, pixels, self.config.iterations, amp=self.amp, keep=keep)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
                "steps": self.steps, "samples_seen": self.samples_seen, "train_time": self.train_time,
                "train_config": asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self._lr_kind()
        self.steps, self.samples_seen = int(state["steps"]), int(state["samples_seen"])
        self.train_time = float(state["train_time"])


@torch.inference_mode()
def evaluate(model: RNNCodec, pixels: Tensor, iterations: int, batch_size: int = 256, amp: bool = False,
             keep: int = 0) -> dict[str, list]:
    """Evaluation-mode quality after each iteration on uint8 images, each a list of length
    ``iterations``: mean ``psnr`` (dB, per image on 8-bit RGB, then averaged), mean ``ms_ssim`` and
    mean absolute ``residual``; with ``keep`` > 0 also ``reconstructions``, the uint8
    reconstructions of the first ``keep`` images (at most one batch) after each iteration."""
    device = _device(model)
    was_training = model.training
    model.eval()
    sums = {k: np.zeros(iterations) for k in ("psnr", "ms_ssim", "residual")}
    kept: list[Tensor] = []
    try:
        for start in range(0, len(pixels), batch_size):
            ref = pixels[start : start + batch_size].to(device)
            with _autocast(device, amp):
                out = model(to_input(ref), iterations)
            for t, (x_hat, r) in enumerate(zip(out["x_hat"], out["residuals"])):
                rec = to_pixels(x_hat.float())
                mse = (rec.float() - ref.float()).square().flatten(1).mean(1)
                sums["psnr"][t] += (10 * torch.log10(255**2 / mse.clamp_min(1e-10))).sum().item()
                sums["ms_ssim"][t] += ms_ssim(rec.float(), ref.float(), data_range=255).sum().item()
                sums["residual"][t] += r.float().abs().flatten(1).mean(1).sum().item()
                if start == 0 and keep:
                    kept.append(rec[:keep].cpu())
    finally:
        model.train(was_training)
    result: dict[str, list] = {k: list(v / len(pixels)) for k, v in sums.items()}
    if keep:
        result["reconstructions"] = kept
    return result


def random_patches(images: list[np.ndarray], count: int, rng: np.random.Generator, size: int = 32) -> Tensor:
    """``count`` random ``size``×``size`` crops (uint8 N×3×size×size) from H×W×3 images,
    each image chosen with probability proportional to its area."""
    areas = np.array([(im.shape[0] - size + 1) * (im.shape[1] - size + 1) for im in images], dtype=float)
    which = rng.choice(len(images), size=count, p=areas / areas.sum())
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(which):
        im = images[k]
        y = rng.integers(0, im.shape[0] - size + 1)
        x = rng.integers(0, im.shape[1] - size + 1)
        out[i] = im[y : y + size, x : x + size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class PatchStream:
    """Endless uint8 batches of 32×32 training patches and a fixed held-out batch, from ``source``: a
    folder written by ``rnncodec data prepare`` (its train split, shuffled per epoch; held out: its val
    split), ``sample`` (the photographs shipped with scikit-image) or a folder of images (random crops)."""

    def __init__(self, source: str, batch_size: int, seed: int, held_out: int = 256):
        from rnncodec.data.images import list_images, load_image
        from rnncodec.data.loader import BatchLoader
        from rnncodec.data.photos import sample_images
        from rnncodec.data.reader import open_split
        from rnncodec.data.shards import MANIFEST

        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)
        if (Path(source) / MANIFEST).is_file():
            self.loader: Any = BatchLoader(open_split(source, "train"), batch_size, seed=seed)
            with open_split(source, "val") as val:
                count = min(held_out, len(val))
                self.held_out = torch.from_numpy(val.images(np.linspace(0, len(val) - 1, count).astype(np.int64)))
            self.description = f"{len(self.loader.reader):,} prepared patches"
            return
        self.loader = None
        found = [im for _, im in sample_images()] if source == "sample" else [load_image(p) for p in list_images(source)]
        self.images = [im for im in found if min(im.shape[:2]) >= 32]
        if not self.images:
            raise CodecError(f"{source} holds no image of at least 32×32 pixels to train on")
        self.held_out = random_patches(self.images, held_out, np.random.default_rng(seed + 1))
        self.description = f"random crops of {len(self.images)} images"

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            if self.loader is None:
                yield random_patches(self.images, self.batch_size, self.rng)
            else:
                yield from self.loader
