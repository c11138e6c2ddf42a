"""``rnncodec sweep run|resume|status|report``: Ray Tune sweeps of codec trials."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from sweeps.arguments import positive

console = Console(stderr=True)


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _run(args: argparse.Namespace) -> int:
    from sweeps import runner

    summary = runner.run(args.spec, name=args.name, storage=args.storage, address=args.address,
                         num_cpus=args.num_cpus, say=_say)
    return 130 if summary["unfinished"] else 1 if summary["errors"] else 0


def _resume(args: argparse.Namespace) -> int:
    from sweeps import runner

    summary = runner.resume(args.path, address=args.address, num_cpus=args.num_cpus, say=_say)
    return 130 if summary["unfinished"] else 1 if summary["errors"] else 0


def _status(args: argparse.Namespace) -> int:
    from sweeps.results import status_table

    table, _, _ = status_table(args.path)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    from sweeps.results import write_report

    result = write_report(args.path, args.out, images=args.images, anchors=args.anchors, limit=args.limit)
    _say(f"wrote {result['out']}: results.csv ({result['rows']} rows), {', '.join(result['figures'])}, summary.md")
    print(result["out"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run, resume and inspect Ray Tune sweeps of codec trials",
                       description="Ray Tune sweeps: every trial trains a codec, reports per epoch, checkpoints, "
                       "and logs to Weights & Biases.")
    cmds = p.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND", required=True)

    q = cmds.add_parser("run", help="run a sweep file", description="Validate SPEC, prepare its data once, start "
                        "a local Ray (or join --address) and run every trial.")
    q.add_argument("spec", metavar="SPEC.yaml", help="sweep file (see sweeps/demo.yaml)")
    q.add_argument("--name", help="sweep name (default: the file's name key); the folder is STORAGE/NAME")
    q.add_argument("--storage", help="results folder or pyarrow URI such as s3://bucket/sweeps (default: the file's)")
    q.add_argument("--address", help="join this Ray cluster (e.g. auto or HOST:6379) instead of starting one")
    q.add_argument("--num-cpus", type=positive(int), help="CPUs of the local Ray (default: all)")
    q.set_defaults(func=_run)

    q = cmds.add_parser("resume", help="continue a sweep's unfinished and errored trials from their checkpoints",
                        description="Continue the unfinished and errored trials of a sweep folder from their "
                        "last readable checkpoints (trials that finished stay finished).")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.add_argument("--address", help="join this Ray cluster instead of starting one")
    q.add_argument("--num-cpus", type=positive(int), help="CPUs of the local Ray (default: all)")
    q.set_defaults(func=_resume)

    q = cmds.add_parser("status", help="table of a sweep's trials", description="State, epoch, failures and best "
                        "metric of every trial of a sweep folder (works while the sweep runs).")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.set_defaults(func=_status)

    q = cmds.add_parser("report", help="results CSV, figures and summary of a sweep",
                        description="Write results.csv, validation curves by batch size and by training-set size "
                        "(mean with 95%% band across repeats), a grid of original/reconstructed validation "
                        "images, and summary.md.")
    q.add_argument("path", metavar="PATH", help="the sweep folder STORAGE/NAME (or its URI)")
    q.add_argument("--out", help="report folder (default: PATH/report)")
    q.add_argument("--images", metavar="DIR", help="also plot rate–distortion of each configuration's best "
                   "checkpoint on these images (e.g. Kodak), as `rnncodec eval` measures it")
    q.add_argument("--anchors", metavar="DIR", help="published curves to overlay on those plots")
    q.add_argument("--limit", type=int, metavar="N", help="use only the first N of --images")
    q.set_defaults(func=_report)


if __name__ == "__main__":  # pragma: no cover - for trying the commands before they are wired in
    from sweeps.spec import SweepError

    parser = argparse.ArgumentParser(prog="rnncodec")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    try:
        sys.exit(int(ns.func(ns) or 0))
    except SweepError as exc:
        print(f"rnncodec: error: {exc}", file=sys.stderr)
        sys.exit(2)
