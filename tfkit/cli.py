"""`tfkit` command line: wires the sub-commands together and turns user errors into one line + exit 2.

Each sub-command's parser may set `check` (pure-Python validation of every flag and path, run
before TensorFlow starts, so a mistake costs a fraction of a second) and `tensorflow=True`
(start TensorFlow quietly before `func`). Building the parsers imports nothing heavy, so
`tfkit --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from tfkit import __version__
from tfkit.commands import bench, distill, export, loadtest, predict, run, serve, train
from tfkit.errors import TfkitError

COMMANDS = (run.run_command_parser, train.train_command_parser, distill.distill_command_parser, predict.predict_command_parser,
            export.export_command_parser, bench.bench_command_parser, serve.serve_command_parser, loadtest.loadtest_command_parser)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, where to look) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tfkit", description="Ship small, fast text classifiers.")
    parser.add_argument("--version", action="version", version=f"tfkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: temporary outputs are removed on the way out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tfkit: %(message)s"))
    # tfkit's own lines; a library's only from warnings up (Keras imports matplotlib, which announces
    # its font cache at INFO on a user's first run)
    handler.addFilter(lambda record: record.name.partition(".")[0] == "tfkit" or record.levelno >= logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if getattr(args, "check", None):
            args.check(args)
        if getattr(args, "tensorflow", False):
            from tfkit import quiet

            quiet.start_tensorflow()
        return args.func(args) or 0
    except TfkitError as e:
        print(f"tfkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfkit: interrupted; finished outputs are untouched and unfinished ones removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
