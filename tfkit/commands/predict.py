"""`tfkit predict`: label and class probabilities for each text."""

from __future__ import annotations

import argparse
import json
import sys

from tfkit.errors import TfkitError


def predict_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify texts with a trained model directory")
    parser.add_argument("model_dir", help="a tfkit model directory, e.g. models/teacher")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line from --file or stdin)")
    parser.add_argument("--file", help="read texts from this file, one per line ('-' for stdin)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.set_defaults(func=predict_command)


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        return args.texts
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f]
        except OSError as e:
            raise TfkitError(f"cannot read {args.file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise TfkitError(f"{args.file} is not UTF-8 text; re-save it as UTF-8") from None
    if sys.stdin.isatty() and args.file != "-":
        raise TfkitError("no texts: pass them as arguments, with --file, or on stdin")
    return [line.rstrip("\n") for line in sys.stdin]


def predict_command(args: argparse.Namespace) -> int:
    from tfkit.classifier import Classifier

    texts = read_texts(args)
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
