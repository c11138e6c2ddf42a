"""The ``rnncodec`` command line: one entry point, one module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from codec.errors import CodecError
from data.errors import DataError

from sweeps import codec_commands, data_commands, eval_commands, sweep_commands
from sweeps.spec import SweepError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnncodec",
        description="Residual recurrent image codec (Toderici et al., CVPR 2017): "
        "train, compress, decompress, prepare data, run sweeps, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    codec_commands.register(sub)
    data_commands.register(sub)
    sweep_commands.register(sub)
    eval_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CodecError, DataError, SweepError) as exc:
        print(f"rnncodec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnncodec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
