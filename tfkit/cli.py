"""`tfkit` command line: wires the sub-commands together and turns user errors into one line + exit 2."""

from __future__ import annotations

import argparse
import logging
import sys

from tfkit.commands import bench, distill, export, predict, run, train
from tfkit.errors import TfkitError

COMMANDS = (run.run_command_parser, train.train_command_parser, distill.distill_command_parser, predict.predict_command_parser,
            export.export_command_parser, bench.bench_command_parser)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfkit", description="Ship small, fast text classifiers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="tfkit: %(message)s", stream=sys.stderr)
    try:
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        return args.func(args) or 0
    except TfkitError as e:
        print(f"tfkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfkit: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
