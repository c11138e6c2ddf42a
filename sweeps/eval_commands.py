"""``rnncodec eval``: rate–distortion on a folder of images (Kodak) against JPEG, WebP, AVIF and
the published curves."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from codec import baselines, evaluation, kodak
from codec.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from codec.errors import CodecError
from codec.rd_plots import load_anchors, rd_plot
from sweeps.arguments import positive

console = Console(stderr=True)


def _qualities(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("write qualities as comma-separated integers, e.g. 5,25,50,75,95") from None
    if not values or any(not 1 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError("qualities must lie in 1..100")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    default_baselines = ",".join(baselines.available_baselines())
    p = sub.add_parser(
        "eval", help="rate–distortion of a checkpoint on Kodak against JPEG, WebP and published curves",
        description="Measure a checkpoint's rate–distortion curve on a folder of images (bpp of the real "
        "bitstream, PSNR and 5-scale MS-SSIM averaged per image) beside Pillow baselines measured on the same "
        "images; write CompressAI-format JSONs, a per-image CSV, BD-rates, AUCs and RD plots.")
    p.add_argument("--checkpoint", type=Path, action="append", metavar="CKPT",
                   help="model checkpoint (repeat to compare several; default: the model bundled with rnncodec)")
    p.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of test images (Kodak)")
    p.add_argument("--out", required=True, type=Path, metavar="RESULTS_DIR", help="folder for the results")
    p.add_argument("--iterations", default="1-16", metavar="SPEC",
                   help="iteration counts: a range and/or list, e.g. 1-16 or 1,2,4,8,16 (default: 1-16)")
    p.add_argument("--baselines", default=default_baselines, metavar="LIST",
                   help=f"comma-separated from {', '.join(baselines.BASELINES)}, or none "
                   f"(default: {default_baselines})")
    p.add_argument("--qualities", type=_qualities, default=baselines.QUALITIES, metavar="LIST",
                   help="baseline qualities (default: 5,10,…,95 as CompressAI)")
    p.add_argument("--anchors", type=Path, default=None, metavar="DIR",
                   help="folder of published curves to overlay (e.g. ../shared/anchors/kodak)")
    p.add_argument("--timing", choices=evaluation.TIMINGS, default="exact",
                   help="exact: compress and decompress afresh at every iteration count; prefix: once at the "
                   "largest, smaller counts cut from it (same bits and quality, times scaled by k/K; much faster "
                   "for 1-16) (default: exact)")
    p.add_argument("--limit", type=positive(int), default=None, metavar="N", help="use only the first N images")
    p.add_argument("--crop", type=positive(int), default=None, metavar="PX",
                   help="centre-crop every image to PX×PX (quick checks; not comparable to published curves)")
    p.add_argument("--device", default="cpu", help="cpu (default, as the published timings) or cuda[:N]")
    p.add_argument("--download-kodak", action="store_true",
                   help="first download the 24 Kodak images into --images (checked against their sha256)")
    p.set_defaults(func=run_eval)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CodecError(f"unknown device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodecError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def _fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "∞" if math.isinf(v) else format(v, spec)


def _names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return [f"rnncodec {s}" if len(paths) > 1 else "rnncodec" for s in stems]
    return [f"rnncodec {i + 1} ({p})" for i, p in enumerate(paths)]


def run_eval(args: argparse.Namespace) -> int:
    iterations = evaluation.parse_iterations(args.iterations)
    keys = baselines.parse_baselines(args.baselines)
    device = _device(args.device)
    anchors = load_anchors(args.anchors) if args.anchors is not None else []
    if args.download_kodak:
        kodak.download_kodak(args.images, console=console)
    images = evaluation.load_images(args.images, limit=args.limit, crop=args.crop)
    args.checkpoint = args.checkpoint or [DEFAULT_CHECKPOINT]
    models = [load_checkpoint(p).to(device) for p in args.checkpoint]
    names = _names(args.checkpoint)
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    ours, base = [], []
    with Progress(*columns, console=console, transient=False) as progress:
        for model, name, path in zip(models, names, args.checkpoint):
            task = progress.add_task(name[:12], total=len(images))
            cfg = model.config
            desc = (f"rnncodec {cfg.cell}/{cfg.mode} width {cfg.width:g} from {path}; real bitstream, no entropy "
                    f"coding; {args.timing} timing on {device}")
            ours.append(evaluation.evaluate_checkpoint(model, images, iterations, name=name, description=desc,
                                                       timing=args.timing,
                                                       advance=lambda t=task: progress.advance(t)))
        for key in keys:
            task = progress.add_task(key, total=len(images))
            base.append(evaluation.evaluate_baseline(key, images, args.qualities,
                                                     advance=lambda t=task: progress.advance(t)))
    summary = evaluation.compare(ours, base, anchors)
    summary["images"] = {"folder": str(args.images), "count": len(images), "crop": args.crop,
                         "names": [n for n, _ in images]}
    summary["iterations"] = iterations
    paths = evaluation.write_results(args.out, [*ours, *base], summary)
    title = f"{len(images)} images from {args.images.name}" + (f", {args.crop}×{args.crop} crops" if args.crop else "")
    paths += rd_plot([*ours, *base], anchors, args.out, title=title)
    _print_summary(ours, summary)
    console.print(f"wrote {len(paths)} files to {args.out}: " + ", ".join(p.name for p in paths))
    return 0


def _print_summary(ours: list[dict], summary: dict) -> None:
    for res in ours:
        r = res["results"]
        table = Table(title=res["name"], title_justify="left")
        for col in ("k", "bpp", "payload bpp", "PSNR dB", "MS-SSIM", "MS-SSIM dB", "enc s", "dec s"):
            table.add_column(col, justify="right")
        for i, k in enumerate(r["iterations"]):
            table.add_row(str(k), _fmt(r["bpp"][i], ".4f"), _fmt(r["bpp-payload"][i], ".4f"), _fmt(r["psnr-rgb"][i]),
                          _fmt(r["ms-ssim-rgb"][i], ".4f"), _fmt(r["ms-ssim-db"][i]),
                          _fmt(r["encoding_time"][i], ".3f"), _fmt(r["decoding_time"][i], ".3f"))
        console.print(table)
        entry = summary["codecs"][res["name"]]
        auc = entry["auc"]
        console.print(f"AUC 0.125–2 bpp: MS-SSIM {_fmt(auc['ms-ssim-rgb'], '.4f')}, PSNR {_fmt(auc['psnr-rgb'])}")
        for base, bd in entry["bd_rate_percent"].items():
            parts = [f"{m} {_fmt(v['bd_rate'], '+.1f')}%" + (f" ({v['note']})" if v["note"] else "")
                     for m, v in bd.items()]
            console.print(f"BD-rate vs {base}: " + "; ".join(parts))
