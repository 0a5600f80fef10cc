"""Classify text with model_text.onnx as a server would: ONNX Runtime plus onnxruntime-extensions, no tfkit.

The file takes a batch of raw UTF-8 strings and returns class probabilities; the tokenizer
is inside as onnxruntime-extensions' BertTokenizer op, so the session must register that
library's custom ops. The label names are read from the model's metadata (`labels`, one per line).

    python examples/classify_onnx.py export/teacher/model_text.onnx "a gripping film" "a dull mess"
    echo "a gripping film" | python examples/classify_onnx.py export/teacher/model_text.onnx
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort
import onnxruntime_extensions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model_text.onnx")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    args = parser.parse_args()
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]

    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    labels = session.get_modelmeta().custom_metadata_map["labels"].split("\n")
    probabilities = session.run(["probabilities"], {"texts": np.array(texts, dtype=object)})[0]
    for text, p in zip(texts, probabilities):
        print(f"{labels[int(p.argmax())]}\t{p.max():.3f}\t{text}")


if __name__ == "__main__":
    main()
