"""The ``rnncodec`` command line: every command's arguments, and a thin handler per command that calls
the library. Heavy libraries (torch, pyarrow, Ray, W&B, matplotlib) are imported only inside the
handler that needs them, so ``--help`` and refused arguments answer at once."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rnncodec.codec.options import (ACTIVATIONS, CELLS, LOSSES, LR_SCHEDULES, MAX_BATCH, MAX_ITERATIONS,
                                    MAX_TRAIN_ITERATIONS, MODES, OPTIMIZERS)
from rnncodec.data.errors import RnncodecError
from rnncodec.data.sources import SOURCES

# --------------------------------------------------------------------------- argument types


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused unless greater than zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError("must be a positive finite number")
        return value

    return parse


def _iterations(text: str, most: int = MAX_ITERATIONS) -> int:
    value = positive(int)(text)
    if value > most:
        raise argparse.ArgumentTypeError(f"must be in 1..{most} (0.125 bpp each)")
    return value


def _batch_size(text: str) -> int:
    value = positive(int)(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_BATCH}")
    return value


def _text(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty; give a value or leave the option out")
    return text


def _path(text: str) -> Path:
    return Path(_text(text))


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError("must be in 0..4294967295 (numpy's seeds)")
    return value


def _train_iterations(text: str) -> int:
    return _iterations(text, MAX_TRAIN_ITERATIONS)


def _qualities(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("write qualities as comma-separated integers, e.g. 5,25,50,75,95") from None
    if not values or any(not 1 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError("qualities must lie in 1..100")
    return values


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False, markup=False, emoji=False)  # paths print as given


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise RnncodecError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RnncodecError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
    return device


# --------------------------------------------------------------------------- train, compress, decompress


def _train(args: argparse.Namespace) -> int:
    import time

    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rnncodec.codec.checkpoint import save_checkpoint, warm_start
    from rnncodec.codec.model import CodecConfig, RNNCodec
    from rnncodec.codec.training import PatchStream, TrainConfig, Trainer
    from rnncodec.data.files import check_output

    check_output(args.out)
    console = _console()
    torch.manual_seed(args.seed)
    device = _device(args.device)
    stream = PatchStream(args.data, args.batch_size, args.seed)
    model = RNNCodec(CodecConfig(cell=args.cell, mode=args.mode, width=args.width, activation=args.activation,
                                 gain_growth=args.gain_growth))
    fresh = warm_start(model, args.init) if args.init else []
    trainer = Trainer(model.to(device), TrainConfig(
        iterations=args.iterations, loss=args.loss, loss_growth=args.loss_growth, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, total_steps=args.steps,
        grad_clip=args.grad_clip, amp=args.amp, deterministic=args.deterministic, cuda_graph=args.cuda_graph))
    params = sum(p.numel() for p in model.parameters())
    console.print(f"training {args.cell}/{args.mode} width {args.width} ({params:,} parameters) on "
                  f"{stream.description}, {args.iterations} iterations, batch {args.batch_size}, {device}")
    if args.init:
        console.print(f"weights from {args.init}" + (f"; new: {', '.join(fresh)}" if fresh else ""))
    start = time.perf_counter()
    batches = iter(stream)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=args.steps, loss=float("nan"))
        while trainer.steps < args.steps:
            chunk = min(args.save_every, args.steps - trainer.steps)
            losses = trainer.run(batches, chunk, on_step=lambda loss: progress.update(task, advance=1, loss=loss))
            if not all(map(math.isfinite, losses)):
                raise RnncodecError(f"training diverged by step {trainer.steps} (the loss is {losses[-1]}); "
                                    f"the diverged weights were not saved: lower --lr or set --grad-clip")
            save_checkpoint(args.out, model, steps=trainer.steps, loss=args.loss, data=str(args.data),
                            init=str(args.init or ""))
            psnr = trainer.evaluate(stream.held_out)["psnr"]
            progress.console.print(f"step {trainer.steps}: held-out PSNR (dB) at 0.125..{0.125 * args.iterations:g} "
                                   f"bpp: {' '.join(f'{v:.2f}' for v in psnr)}")
    console.print(f"wrote {args.out} after {time.perf_counter() - start:.0f} s")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from rnncodec.codec.allocator import reuse_freed_memory
    from rnncodec.codec.bitstream import compress
    from rnncodec.codec.checkpoint import load_checkpoint
    from rnncodec.data.files import check_output, write_atomic
    from rnncodec.data.images import load_image

    check_output(args.out, args.image)
    reuse_freed_memory()
    image = load_image(args.image)
    model = load_checkpoint(args.checkpoint)
    data = compress(model, image, args.iterations, entropy_coding=not args.raw)
    write_atomic(args.out, data)
    pixels = image.shape[0] * image.shape[1]
    _console().print(f"wrote {args.out}: {len(data):,} bytes, {len(data) * 8 / pixels:.4f} bpp "
                     f"({args.iterations} iterations of {image.shape[1]}×{image.shape[0]})")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from rnncodec.codec.allocator import reuse_freed_memory
    from rnncodec.codec.bitstream import decompress, read_bitstream
    from rnncodec.codec.checkpoint import load_checkpoint
    from rnncodec.data.files import check_output
    from rnncodec.data.images import save_png

    check_output(args.out, args.input)
    reuse_freed_memory()
    data = read_bitstream(args.input)
    image = decompress(load_checkpoint(args.checkpoint), data, args.iterations)
    save_png(args.out, image)
    _console().print(f"wrote {args.out}: {image.shape[1]}×{image.shape[0]}")
    return 0


def _add_codec_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one codec on 32×32 patches (no Ray)",
                       description="Train one codec (no Ray) on 32×32 patches of prepared Arrow shards, a folder "
                       "of images (random crops) or the built-in sample photographs, and write a checkpoint. The "
                       "same training loop as every sweep trial.")
    p.add_argument("--data", required=True, metavar="DIR|SHARDS|sample",
                   help="folder of images (random crops), a folder written by `rnncodec data prepare` "
                   "(its train split, shuffled per epoch), or 'sample' for the photographs shipped with scikit-image")
    p.add_argument("--out", required=True, type=_path, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell (default: lstm)")
    p.add_argument("--mode", choices=MODES, default="additive", help="reconstruction mode (default: additive)")
    p.add_argument("--width", type=positive(float), default=0.25,
                   help="channel multiplier; 1 is the paper's 35M-parameter model (default: 0.25, CPU-friendly)")
    p.add_argument("--iterations", type=_train_iterations, default=8,
                   help=f"iterations per patch, 0.125 bpp each; up to {MAX_TRAIN_ITERATIONS}, past the {MAX_ITERATIONS} "
                   f"a file holds, so that iteration {MAX_ITERATIONS} is not the last one trained (default: 8)")
    p.add_argument("--batch-size", type=_batch_size, default=32, help="patches per step (default: 32)")
    p.add_argument("--steps", type=positive(int), default=500, help="optimizer steps (default: 500)")
    p.add_argument("--loss", choices=LOSSES, default="l1", help="training loss (default: l1, the paper's)")
    p.add_argument("--loss-growth", type=float, default=1.0, metavar="G",
                   help="weigh iteration t's loss term by G**(t-1), the weights summing to the iteration count "
                   "(0.5..2; default: 1, all alike). G > 1 gives the late iterations more of the gradient")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer (default: adam)")
    p.add_argument("--lr", type=positive(float), default=5e-4, help="learning rate (default: 5e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default: 0)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="none",
                   help="none (constant), cosine over --steps, or step (÷10 at 2/3 of them) (default: none)")
    p.add_argument("--grad-clip", type=positive(float), default=None, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--activation", choices=ACTIVATIONS, default="none",
                   help="non-linearity after E-Conv and D-Conv 1 (default: none, as the paper)")
    p.add_argument("--gain-growth", type=float, default=1.0, metavar="G",
                   help="fixed residual scaling: the encoder sees the residual times G**(t-1) at iteration t and "
                   "the decoder's output is divided by it (1..2; default: 1, off)")
    p.add_argument("--save-every", type=positive(int), default=500, metavar="STEPS",
                   help="also write the checkpoint every STEPS steps (default: 500)")
    p.add_argument("--init", type=_path, metavar="CKPT",
                   help="start from this checkpoint's weights (same cell and width; the mode may differ)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on GPUs and CPUs with native bf16 (AVX512-BF16, AMX); ignored elsewhere")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels, so GPU runs reproduce bit for bit (slower; CPU runs always do)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="on a GPU, replay each training step as one CUDA graph (adam, adamw; ignored on CPUs)")
    p.set_defaults(func=_train)

    p = sub.add_parser("compress", help="compress an image to an rnncodec file",
                       description="Compress an image with a trained codec. Each iteration adds 0.125 bpp of codes, "
                       "entropy-coded by default (a version 2 file).")
    p.add_argument("image", type=_path, help="input image (PNG, JPEG, …)")
    p.add_argument("out", type=_path, help="output bitstream file")
    p.add_argument("--checkpoint", type=_path, metavar="CKPT",
                   help="trained model checkpoint (default: the model bundled with rnncodec)")
    p.add_argument("--iterations", type=_iterations, default=8,
                   help="iterations to code, 0.125 bpp each before entropy coding (default: 8)")
    coding = p.add_mutually_exclusive_group()
    coding.add_argument("--entropy-coding", dest="raw", action="store_false",
                        help="entropy-code the bits with the adaptive context model (version 2 file; the default)")
    coding.add_argument("--raw", action="store_true", help="store the bits raw (version 1 file, the old layout)")
    p.set_defaults(func=_compress, raw=False)  # argparse takes a shared dest's default from its first action

    p = sub.add_parser("decompress", help="decompress an rnncodec file to PNG",
                       description="Decode an rnncodec file, optionally only its first K iterations.")
    p.add_argument("input", type=_path, help="bitstream written by `rnncodec compress`")
    p.add_argument("out", type=_path, help="output PNG")
    p.add_argument("--checkpoint", type=_path, metavar="CKPT",
                   help="the checkpoint that compressed it (default: the model bundled with rnncodec)")
    p.add_argument("--iterations", type=_iterations, default=None, help="decode only the first K iterations")
    p.set_defaults(func=_decompress)


# --------------------------------------------------------------------------- data


def _data_prepare(args: argparse.Namespace) -> int:
    from rnncodec.data.preparation import prepare

    print(prepare(args.source, root=args.root, rotations=args.rotations, size=args.size, seed=args.seed,
                  out=args.out, cache_dir=args.cache_dir, accept_unverified=args.accept_unverified,
                  hard_patches=args.hard_patches, val_fraction=args.val_fraction,
                  rows_per_shard=args.rows_per_shard, force=args.force))
    return 0


def _data_info(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from rnncodec.data.info import summary, write_grid
    from rnncodec.data.remote import resolve

    folder = resolve(args.dir, args.cache_dir)
    info = summary(folder, verify_sha256=not args.no_verify)
    console = _console(stderr=False)
    console.print(f"{folder} ({'sha256 verified' if not args.no_verify else 'sizes checked'})")
    table = Table()
    for column in ("split", "images", "shards", "MB"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, split in info["splits"].items():
        table.add_row(name, f"{split['rows']:,}", str(split["shards"]), f"{split['bytes'] / 1e6:,.1f}")
    console.print(table)
    print(json.dumps(info["manifest"], indent=2, sort_keys=True))
    grid = args.grid or Path(f"{folder.name}-grid.png")
    shown = write_grid(folder, grid, split=args.split, count=args.samples, seed=args.seed)
    console.print(f"wrote a grid of {shown} {args.split} images to {grid}")
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("data", help="prepare and inspect training data (Arrow shards)",
                           description="Prepare and inspect training data: Arrow IPC shards in a keyed cache.")
    commands = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = commands.add_parser(
        "prepare", help="write a source as Arrow shards in the cache (or reuse them) and print the folder",
        description="Write SOURCE as uncompressed Arrow IPC shards plus manifest.json, keyed by the parameters: "
        "a second call with the same parameters reuses (and verifies) the same folder. Prints the folder.")
    p.add_argument("--source", required=True, help=f"one of: {SOURCES}")
    p.add_argument("--root", type=_path, help="CIFAR archive (.tar.gz), its extracted folder, or a folder holding "
                   "them; default: download into the cache")
    p.add_argument("--rotations", type=int, default=1, metavar="K",
                   help="keep each training image in K quarter-turn orientations (2 doubles, 4 quadruples; default 1)")
    p.add_argument("--size", type=int, metavar="N", help="draw N training images (after rotation) with --seed; "
                   "default: all")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the --size subset (default 0)")
    p.add_argument("--out", type=_path, metavar="DIR", help="write into DIR instead of a parameter-named folder of "
                   "the cache")
    p.add_argument("--cache-dir", type=_path, metavar="DIR",
                   help="cache folder (default $RNNCODEC_CACHE, else $XDG_CACHE_HOME/rnncodec or ~/.cache/rnncodec)")
    p.add_argument("--accept-unverified", action="store_true",
                   help="use a CIFAR archive whose md5 sums differ from the official ones (it is unpickled: trust it first)")
    p.add_argument("--hard-patches", type=int, metavar="K",
                   help="photo sources: keep per photo only the K patches that compress worst as PNG")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="photo sources: share of patches held out (whole photos) for validation (default 0.1)")
    p.add_argument("--rows-per-shard", type=int, default=65536, metavar="N", help="images per shard file "
                   "(default 65536)")
    p.add_argument("--force", action="store_true", help="rebuild the folder even if it exists")
    p.set_defaults(func=_data_prepare)

    p = commands.add_parser(
        "info", help="print counts, bytes and manifest of a prepared folder and write a PNG grid of its images",
        description="Verify a prepared folder (local path or pyarrow URI), print its splits and manifest, "
        "and write a PNG grid of sample images.")
    p.add_argument("dir", metavar="DIR", help="prepared folder, or a URI such as s3://bucket/dataset")
    p.add_argument("--grid", type=_path, metavar="PNG", help="where to write the grid (default ./<folder name>-grid.png)")
    p.add_argument("--split", default="train", help="split shown in the grid (default train)")
    p.add_argument("--samples", type=positive(int), default=64, metavar="N", help="images in the grid (default 64)")
    p.add_argument("--seed", type=_seed, default=0, help="seed choosing the grid's images (default 0)")
    p.add_argument("--no-verify", action="store_true", help="check shard sizes only, not their sha256")
    p.add_argument("--cache-dir", type=_path, metavar="DIR", help="where a URI's folder is copied (default: the cache)")
    p.set_defaults(func=_data_info)


# --------------------------------------------------------------------------- sweeps


def _say(message: str) -> None:
    _console().print(message)


def _sweep_run(args: argparse.Namespace) -> int:
    from rnncodec.sweeps import runner

    summary = runner.run(args.spec, name=args.name, storage=args.storage, address=args.address,
                         num_cpus=args.num_cpus, say=_say, data_root=args.data_root,
                         accept_unverified=args.accept_unverified)
    return 130 if summary["unfinished"] else 1 if summary["errors"] else 0


def _sweep_resume(args: argparse.Namespace) -> int:
    from rnncodec.sweeps import runner

    summary = runner.resume(args.path, address=args.address, num_cpus=args.num_cpus, say=_say)
    return 130 if summary["unfinished"] else 1 if summary["errors"] else 0


def _sweep_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rnncodec.sweeps.results import damaged, status_table

    table, _, trials = status_table(args.path)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    for note in damaged(trials):
        _say(f"note: passed over the checkpoint {note}")
    return 0


def _sweep_report(args: argparse.Namespace) -> int:
    from rnncodec.sweeps.results import write_report

    result = write_report(args.path, args.out, images=args.images, anchors=args.anchors, limit=args.limit)
    for note in result["damaged"]:
        _say(f"note: passed over the checkpoint {note}")
    _say(f"wrote {result['out']}: results.csv ({result['rows']} rows), {', '.join(result['figures'])}, summary.md")
    print(result["out"])
    return 0


def _add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run, resume and inspect Ray Tune sweeps of codec trials",
                       description="Ray Tune sweeps: every trial trains a codec, reports per epoch, checkpoints, "
                       "and logs to Weights & Biases.")
    cmds = p.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND", required=True)
    q = cmds.add_parser("run", help="run a sweep file", description="Validate SPEC, check the storage, prepare its "
                        "data once, start a local Ray (or join --address) and run every trial.")
    q.add_argument("spec", metavar="SPEC.yaml", help="sweep file (see sweeps/demo.yaml)")
    q.add_argument("--name", type=_text, help="sweep name (default: the file's name key); the folder is STORAGE/NAME")
    q.add_argument("--storage", type=_text, help="results folder or pyarrow URI such as s3://bucket/sweeps (default: the file's)")
    q.add_argument("--address", help="join this Ray cluster (e.g. auto or HOST:6379) instead of starting one")
    q.add_argument("--num-cpus", type=positive(int), help="CPUs of the local Ray (default: all)")
    q.add_argument("--data-root", metavar="ROOT", help="folder holding the CIFAR archives (replaces the file's "
                   "data.root; default: download into the cache)")
    q.add_argument("--accept-unverified", action="store_true",
                   help="use CIFAR archives whose md5 sums differ from the official ones (they are unpickled: "
                   "trust them first)")
    q.set_defaults(func=_sweep_run)

    q = cmds.add_parser("resume", help="continue a sweep's unfinished and errored trials from their checkpoints",
                        description="Continue the unfinished and errored trials of a sweep folder from their "
                        "last readable checkpoints (trials that finished stay finished).")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.add_argument("--address", help="join this Ray cluster instead of starting one")
    q.add_argument("--num-cpus", type=positive(int), help="CPUs of the local Ray (default: all)")
    q.set_defaults(func=_sweep_resume)

    q = cmds.add_parser("status", help="table of a sweep's trials", description="State, epoch, failures and best "
                        "metric of every trial of a sweep folder (works while the sweep runs).")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.set_defaults(func=_sweep_status)

    q = cmds.add_parser("report", help="results CSV, figures and summary of a sweep",
                        description="Write results.csv, validation curves by batch size and by training-set size "
                        "(mean with 95% band across repeats), reconstructions by each configuration's best "
                        "checkpoint (of a held-out photograph through the real codec when the data are "
                        "photographs, else of validation images), and summary.md.")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.add_argument("--out", help="report folder (default: PATH/report)")
    q.add_argument("--images", metavar="DIR", help="also plot rate–distortion of each configuration's best "
                   "checkpoint on these images (e.g. Kodak), as `rnncodec eval` measures it")
    q.add_argument("--anchors", metavar="DIR", help="published curves to overlay on those plots")
    q.add_argument("--limit", type=positive(int), metavar="N", help="use only the first N of --images")
    q.set_defaults(func=_sweep_report)


# --------------------------------------------------------------------------- eval


def _fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "∞" if math.isinf(v) else format(v, spec)


def _names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return [f"rnncodec {s}" if len(paths) > 1 else "rnncodec" for s in stems]
    return [f"rnncodec {i + 1} ({p})" for i, p in enumerate(paths)]


def _eval(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from rnncodec.codec.allocator import reuse_freed_memory
    from rnncodec.codec.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from rnncodec.evaluation import baselines, kodak, rd
    from rnncodec.data.files import check_output_folder, staged_files
    from rnncodec.evaluation.plots import load_anchors, rd_plot
    from rnncodec.evaluation.results import write_results

    check_output_folder(args.out)
    reuse_freed_memory()
    console = _console()
    iterations = rd.parse_iterations(args.iterations)
    timing = rd.timing_description(args.timing, args.timing_images)
    spec = "jpeg,webp" if args.baselines is None else args.baselines
    keys = baselines.parse_baselines(",".join(baselines.available_baselines()) if spec == "all" else spec)
    qualities = args.qualities or baselines.QUALITIES
    device = _device(args.device)
    anchors = load_anchors(args.anchors) if args.anchors is not None else []
    if args.download_kodak:
        kodak.download_kodak(args.images, console=console)
    images = rd.checked_images(rd.load_images(args.images, limit=args.limit, crop=args.crop))  # before any work
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    models = [load_checkpoint(p).to(device) for p in checkpoints]
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    ours, base = [], []
    with Progress(*columns, console=console, transient=False) as progress:
        for model, name, path in zip(models, _names(checkpoints), checkpoints):
            task = progress.add_task(name[:12], total=len(images))
            cfg = model.config
            desc = (f"rnncodec {cfg.cell}/{cfg.mode} width {cfg.width:g} from {path}; real bitstream, entropy-coded "
                    f"(context model); {timing}; on {device}")
            ours.append(rd.evaluate_checkpoint(model, images, iterations, name=name, description=desc,
                                               timing=args.timing, timing_images=args.timing_images,
                                               advance=lambda t=task: progress.advance(t)))
        for key in keys:
            task = progress.add_task(key, total=len(images))
            base.append(rd.evaluate_baseline(key, images, qualities, advance=lambda t=task: progress.advance(t)))
    raws = [rd.raw_codes(res) for res in ours]
    summary = rd.compare(ours, base, anchors)
    summary["codecs"].update(rd.compare(raws, base)["codecs"])
    summary["images"] = {"folder": str(args.images), "count": len(images), "crop": args.crop,
                         "names": [n for n, _ in images]}
    summary["iterations"] = iterations
    summary["timing"] = timing
    title = f"{len(images)} images from {args.images.name}" + (f", {args.crop}×{args.crop} crops" if args.crop else "")
    with staged_files(args.out) as stage:  # the whole set of results, or none of it
        paths = write_results(stage, [*ours, *raws, *base], summary)
        paths += rd_plot([*ours, *raws, *base], anchors, stage, title=title)
    _print_eval(console, ours, summary)
    console.print(f"wrote {len(paths)} files to {args.out}: " + ", ".join(p.name for p in paths))
    return 0


def _print_eval(console: Any, ours: list[dict], summary: dict) -> None:
    from rich.table import Table

    for res in ours:
        r = res["results"]
        table = Table(title=res["name"], title_justify="left")
        for col in ("k", "bpp", "raw bpp", "saving", "PSNR dB", "MS-SSIM", "MS-SSIM dB", "enc s", "dec s"):
            table.add_column(col, justify="right")
        for i, k in enumerate(r["iterations"]):
            table.add_row(str(k), _fmt(r["bpp"][i], ".4f"), _fmt(r["bpp-raw"][i], ".4f"),
                          f"{100 * (1 - r['bpp'][i] / r['bpp-raw'][i]):.1f}%", _fmt(r["psnr-rgb"][i]),
                          _fmt(r["ms-ssim-rgb"][i], ".4f"), _fmt(r["ms-ssim-db"][i]),
                          _fmt(r["encoding_time"][i], ".3f"), _fmt(r["decoding_time"][i], ".3f"))
        console.print(table)
        console.print(f"Scoring and times: {res['timing']}")
        coding = summary["entropy_coding"][res["name"]]["bd_rate_vs_raw_percent"]
        console.print("BD-rate of entropy coding vs the raw codes: "
                      + "; ".join(f"{m} {_fmt(v['bd_rate'], '+.1f')}%" for m, v in coding.items()))
        for curve, which in ((res["name"], ""), (f"{res['name']} (raw codes)", " of the raw codes")):
            entry = summary["codecs"][curve]
            aucs = [f"{label} {_fmt(entry['auc'][m], spec)}"
                    + (f" ({entry['auc_notes'][m]})" if entry["auc_notes"][m] else "")
                    for label, m, spec in (("MS-SSIM", "ms-ssim-rgb", ".4f"), ("PSNR", "psnr-rgb", ".2f"))]
            console.print(f"AUC 0.125–2 bpp{which}: " + ", ".join(aucs))
        entry = summary["codecs"][res["name"]]
        for base, bd in entry["bd_rate_percent"].items():
            parts = [f"{m} {_fmt(v['bd_rate'], '+.1f')}%" + (f" ({v['note']})" if v["note"] else "")
                     for m, v in bd.items()]
            console.print(f"BD-rate vs {base}: " + "; ".join(parts))


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="rate–distortion of a checkpoint on Kodak against JPEG, WebP and published curves",
        description="Measure a checkpoint's rate–distortion curve on a folder of images (bpp of the real "
        "bitstream, PSNR and 5-scale MS-SSIM averaged per image) beside Pillow baselines measured on the same "
        "images; write CompressAI-format JSONs, a per-image CSV, BD-rates, AUCs and RD plots.",
        epilog="By default (--timing sample) each image is compressed once, at the largest iteration count; the "
        "file for each smaller count is its prefix (byte for byte what compress writes for that count) and the "
        "reconstructions are the encoder's own (bit for bit the decoder's), so bpp, PSNR and MS-SSIM equal those "
        "of --timing exact. Encode/decode times at every count are split out of that compress and one real "
        "decompress at the largest count, timed per iteration (a compress or decompress at k does the work of "
        "their first k iterations), on the first --timing-images images (1 by default), averaged over those only. "
        "--timing exact compresses and decompresses afresh at every count on every image and times each: for "
        "1-16, 8.5 times the codec work.")
    p.add_argument("--checkpoint", type=_path, action="append", metavar="CKPT",
                   help="model checkpoint (repeat to compare several; default: the model bundled with rnncodec)")
    p.add_argument("--images", required=True, type=_path, metavar="DIR", help="folder of test images (Kodak)")
    p.add_argument("--out", required=True, type=_path, metavar="RESULTS_DIR", help="folder for the results")
    p.add_argument("--iterations", default="1-16", metavar="SPEC",
                   help="iteration counts: a range and/or list, e.g. 1-16 or 1,2,4,8,16 (default: 1-16)")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comma-separated from jpeg, jpeg444, webp, avif; all (every one this Pillow supports) or "
                   "none (default: jpeg,webp)")
    p.add_argument("--qualities", type=_qualities, default=None, metavar="LIST",
                   help="baseline qualities (default: 5,10,…,95 as CompressAI)")
    p.add_argument("--anchors", type=_path, default=None, metavar="DIR",
                   help="folder of published curves to overlay (e.g. ../shared/anchors/kodak)")
    p.add_argument("--timing", choices=("sample", "exact", "prefix"), default="sample",
                   help="sample: score every image from one compress at the largest count (smaller counts are its "
                   "prefixes) and time every count on the first --timing-images images, split per iteration out of "
                   "that compress and one real decompress; exact: real compress and decompress at every count on every "
                   "image, all timed; prefix: as sample, with every image timed (default: sample)")
    p.add_argument("--timing-images", type=int, default=1, metavar="N",
                   help="with --timing sample, how many images (the first N) are timed; 0 times "
                   "none (default: 1)")
    p.add_argument("--limit", type=positive(int), default=None, metavar="N", help="use only the first N images")
    p.add_argument("--crop", type=positive(int), default=None, metavar="PX",
                   help="centre-crop every image to PX×PX (quick checks; not comparable to published curves)")
    p.add_argument("--device", default="cpu", help="cpu (default, as the published timings) or cuda[:N]")
    p.add_argument("--download-kodak", action="store_true",
                   help="first download the 24 Kodak images into --images (checked against their sha256)")
    p.set_defaults(func=_eval)


# --------------------------------------------------------------------------- entry point


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error; --help shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnncodec",
        description="Residual recurrent image codec (Toderici et al., CVPR 2017): "
        "train, compress, decompress, prepare data, run sweeps, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_codec_commands(sub)
    _add_data_commands(sub)
    _add_sweep_commands(sub)
    _add_eval_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RnncodecError as exc:
        print(f"rnncodec: error: {str(exc).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnncodec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
