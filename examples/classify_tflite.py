"""Classify text with model_text.tflite as an app would: LiteRT plus the tensorflow-text ops, no tfkit.

The file takes a batch of raw UTF-8 strings and returns class probabilities; the tokenizer
is inside as three tensorflow-text custom ops, so the interpreter must be given their
kernels (here the Python registrar; on Android/iOS link the tensorflow-text TFLite ops).
The label names are read from the file's `labels` metadata entry, one per line.

    python examples/classify_tflite.py export/teacher/model_text.tflite "a gripping film" "a dull mess"
    echo "a gripping film" | python examples/classify_tflite.py export/teacher/model_text.tflite
"""

import argparse
import sys

import numpy as np
import tensorflow_text  # kernels of FastBertNormalize, FastWordpieceTokenizeWithOffsets, RaggedTensorToTensor
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import InterpreterWithCustomOps


def read_metadata(path: str, name: str) -> str:
    """A named Metadata entry of a .tflite file (what C++ gets from FlatBufferModel::ReadAllMetadata)."""
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
    raise SystemExit(f"{path} has no '{name}' metadata; export it with `tfkit export`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model_text.tflite (or model_text_int8.tflite)")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    args = parser.parse_args()
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]

    labels = read_metadata(args.model, "labels").split("\n")
    interpreter = InterpreterWithCustomOps(model_path=args.model,
                                           custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)
    classify = interpreter.get_signature_runner("serve")
    probabilities = classify(texts=np.array(texts, dtype=object))["probabilities"]
    for text, p in zip(texts, probabilities):
        print(f"{labels[int(p.argmax())]}\t{p.max():.3f}\t{text}")


if __name__ == "__main__":
    main()
