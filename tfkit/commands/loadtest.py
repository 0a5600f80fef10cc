"""`tfkit loadtest`: load a local `tfkit serve`, then run the same file in-process (see `tfkit.loadtest`)."""

from __future__ import annotations

import argparse


def loadtest_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("loadtest", help="load a local tfkit server and compare with in-process ONNX Runtime")
    parser.add_argument("url", help="a loopback URL of `tfkit serve`, e.g. http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=2000, help="requests per repeat (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    parser.add_argument("--batch", type=int, default=1, help="texts per request (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs back to back, e.g. 3 to see memory stay flat (default 1)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="each run stops issuing requests after this (default 300)")
    parser.add_argument("--in-process-seconds", type=float, default=4.0,
                        help="in-process ONNX Runtime time per batch size per run (default 4)")
    parser.add_argument("--texts", help="a UTF-8 file, one text a line (default: the export's test texts)")
    parser.add_argument("--json", metavar="FILE", help="also write every number to this JSON file")
    parser.set_defaults(func=loadtest_command)


def loadtest_command(args: argparse.Namespace) -> int:
    from tfkit.artifacts import write_json
    from tfkit.commands.predict import read_texts
    from tfkit.loadtest import check_loopback, loadtest, summary

    check_loopback(args.url)  # refuse before anything else
    texts = None
    if args.texts:
        texts = [t for t in read_texts(argparse.Namespace(texts=[], file=args.texts)) if t.strip()]
    result = loadtest(args.url, args.requests, args.concurrency, args.batch, args.repeat, args.max_seconds, texts,
                      args.in_process_seconds)
    print(summary(result))
    if args.json:
        write_json(args.json, result)
    return 0
