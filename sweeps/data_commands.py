"""``rnncodec data prepare|info``: build the Arrow shard cache and look inside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data import SOURCES, prepare, resolve
from data.cache import default_cache_dir
from data.cifar import FLAG
from data.info import summary, write_grid
from data.shards import DEFAULT_ROWS_PER_SHARD


def _prepare(args: argparse.Namespace) -> int:
    folder = prepare(
        args.source,
        root=args.root,
        rotations=args.rotations,
        size=args.size,
        seed=args.seed,
        out=args.out,
        cache_dir=args.cache_dir,
        accept_unverified=args.accept_unverified,
        hard_patches=args.hard_patches,
        val_fraction=args.val_fraction,
        rows_per_shard=args.rows_per_shard,
        force=args.force,
    )
    print(folder)
    return 0


def _info(args: argparse.Namespace) -> int:
    folder = resolve(args.dir, args.cache_dir)
    info = summary(folder, verify_sha256=not args.no_verify)
    console = Console()
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group (``prepare``, ``info``) to the ``rnncodec`` parser."""
    group = sub.add_parser("data", help="prepare and inspect training data (Arrow shards)", description=__doc__)
    commands = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser(
        "prepare",
        help="write a source as Arrow shards in the cache (or reuse them) and print the folder",
        description="Write SOURCE as uncompressed Arrow IPC shards plus manifest.json, keyed by the parameters: "
        "a second call with the same parameters reuses (and verifies) the same folder. Prints the folder.",
    )
    p.add_argument("--source", required=True, help=f"one of: {SOURCES}")
    p.add_argument(
        "--root",
        type=Path,
        help="CIFAR archive (.tar.gz), its extracted folder, or a folder holding them; "
        "default: download into the cache",
    )
    p.add_argument(
        "--rotations",
        type=int,
        default=1,
        metavar="K",
        help="keep each training image in K quarter-turn orientations (2 doubles, 4 quadruples; default 1)",
    )
    p.add_argument(
        "--size", type=int, metavar="N", help="draw N training images (after rotation) with --seed; default: all"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --size subset (default 0)")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write into DIR instead of a parameter-named folder of the cache"
    )
    p.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help=f"cache folder (default $RNNCODEC_CACHE or {default_cache_dir()})"
    )
    p.add_argument(
        FLAG,
        action="store_true",
        help="use a CIFAR archive whose md5 sums differ from the official ones (it is unpickled: trust it first)",
    )
    p.add_argument(
        "--hard-patches",
        type=int,
        metavar="K",
        help="photo sources: keep per photo only the K patches that compress worst as PNG",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="photo sources: share of patches held out (whole photos) for validation (default 0.1)",
    )
    p.add_argument(
        "--rows-per-shard",
        type=int,
        default=DEFAULT_ROWS_PER_SHARD,
        metavar="N",
        help=f"images per shard file (default {DEFAULT_ROWS_PER_SHARD})",
    )
    p.add_argument("--force", action="store_true", help="rebuild the folder even if it exists")
    p.set_defaults(func=_prepare)

    i = commands.add_parser(
        "info",
        help="print counts, bytes and manifest of a prepared folder and write a PNG grid of its images",
        description="Verify a prepared folder (local path or pyarrow URI), print its splits and manifest, "
        "and write a PNG grid of sample images.",
    )
    i.add_argument("dir", metavar="DIR", help="prepared folder, or a URI such as s3://bucket/dataset")
    i.add_argument(
        "--grid", type=Path, metavar="PNG", help="where to write the grid (default ./<folder name>-grid.png)"
    )
    i.add_argument("--split", default="train", help="split shown in the grid (default train)")
    i.add_argument("--samples", type=int, default=64, metavar="N", help="images in the grid (default 64)")
    i.add_argument("--seed", type=int, default=0, help="seed choosing the grid's images (default 0)")
    i.add_argument("--no-verify", action="store_true", help="check shard sizes only, not their sha256")
    i.add_argument("--cache-dir", type=Path, metavar="DIR", help="where a URI's folder is copied (default: the cache)")
    i.set_defaults(func=_info)
