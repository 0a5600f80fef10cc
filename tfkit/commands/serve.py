"""`tfkit serve`: an exported model behind HTTP on ONNX Runtime (see `tfkit.serve`)."""

from __future__ import annotations

import argparse

HELP = {
    "model": "a verified .onnx file of EXPORT_DIR (default: --format)",
    "format": "onnx-int8, onnx or onnx-text (default: the first of these that passed its gate)",
    "host": "address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    "port": "port (default 8080; 0 picks a free one, printed at start)",
    "max_batch": "texts per ONNX Runtime run (default 32)",
    "max_wait_ms": "how long a request waits for others to share its batch (default 2)",
    "max_inputs": "texts per request; more get 413 (default 64)",
    "max_chars": "characters per text; longer get 413 (default 10000)",
    "max_body_bytes": "request body cap; larger get 413 (default 1000000)",
    "max_concurrent": "requests admitted at once; more get 429 (default 256)",
    "threads": "ONNX Runtime intra-op threads (default 0: 1 or one per core, whichever runs the export's test texts "
               "faster at start-up); with several servers on one host, give each its share",
    "drain_seconds": "on SIGTERM, how long in-flight requests may still take (default 30)",
    "allow_tokenizer_mismatch": "serve even if the server's tokenizer disagrees with the training tokenizer on the "
                                "export's check texts, or the export has none (/info reports it)",
}


DESCRIPTION = ("Serve an export directory's ONNX file over HTTP. Several processes per host: start one per core, "
               "each on its own port, and balance across them.")


def add_serve_arguments(parser) -> None:
    """The flags of `tfkit serve` (also `python -m tfkit.serve`)."""
    from tfkit.commands import add_config_arguments
    from tfkit.serve import ServeConfig

    parser.add_argument("export_dir", help="a tfkit export directory, e.g. export/student")
    add_config_arguments(parser, ServeConfig, HELP, skip=("export_dir",))
    parser.set_defaults(func=serve_command)


def serve_command_parser(subparsers) -> None:
    add_serve_arguments(subparsers.add_parser("serve", description=DESCRIPTION,
                                              help="serve an exported model over HTTP (ONNX Runtime, dynamic batching)"))


def serve_command(args: argparse.Namespace) -> int:
    from tfkit.commands import config_from_args
    from tfkit.serve import ServeConfig, serve

    return serve(config_from_args(args, ServeConfig))
