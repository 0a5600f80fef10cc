"""`tfkit predict`: label and class probabilities for each text."""

from __future__ import annotations

import argparse
import json
import sys

from tfkit.data import python_encoding
from tfkit.errors import TfkitError


def predict_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify texts with a trained model directory")
    parser.add_argument("model_dir", help="a tfkit model directory, e.g. models/teacher")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line from --file or stdin)")
    parser.add_argument("--file", help="read texts from this file, one per line ('-' for stdin)")
    parser.add_argument("--encoding", default="utf-8", help="text encoding of --file, e.g. latin-1 (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.set_defaults(func=predict_command, check=check_predict, tensorflow=True)


def check_predict(args: argparse.Namespace) -> None:
    """The model directory and the texts are read before TensorFlow starts."""
    from tfkit.artifacts import check_model_dir
    from tfkit.config import check_encoding

    check_encoding(args.encoding)
    check_model_dir(args.model_dir)
    args.texts = read_texts(args)
    if not args.texts:
        raise TfkitError(f"no texts in {args.file or 'standard input'}")


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return args.texts
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding=python_encoding(args.encoding)) as f:
                return [line.rstrip("\r\n") for line in f]
        except OSError as e:
            raise TfkitError(f"cannot read {args.file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise TfkitError(f"{args.file} is not {args.encoding} text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                             "pass --encoding (e.g. latin-1, cp1252) or re-save it as UTF-8") from None
    if sys.stdin.isatty() and args.file != "-":
        raise TfkitError("no texts: pass them as arguments, with --file, or on stdin")
    return [line.rstrip("\n") for line in sys.stdin]


def predict_command(args: argparse.Namespace) -> int:
    from tfkit.classifier import Classifier

    texts = args.texts
    classifier = Classifier.load(args.model_dir)
    probabilities = classifier.predict_proba(texts)
    for text, p in zip(texts, probabilities):
        scores = {name: round(float(q), 4) for name, q in zip(classifier.labels, p)}
        label = classifier.labels[int(p.argmax())]
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": scores}, ensure_ascii=False))
        else:
            detail = "  ".join(f"{name}={q:.3f}" for name, q in scores.items())
            print(f"{label}\t{detail}\t{text}")
    return 0
