"""Classify text with model_mediapipe.tflite as an app would: MediaPipe Tasks' TextClassifier, no tfkit.

The file carries its WordPiece vocabulary and label names as TFLite Model Metadata, so
MediaPipe tokenizes the strings itself and names the classes: the same file and the same few
calls work in MediaPipe's Android, iOS and web TextClassifier. Needs only `pip install mediapipe`.

    python examples/classify_mediapipe.py export/student/model_mediapipe.tflite "a gripping film" "a dull mess"
    echo "a gripping film" | python examples/classify_mediapipe.py export/student/model_mediapipe.tflite
"""

import argparse
import sys

from mediapipe.tasks import python as tasks
from mediapipe.tasks.python import text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model_mediapipe.tflite")
    parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    args = parser.parse_args()
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]

    options = text.TextClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=args.model))
    with text.TextClassifier.create_from_options(options) as classifier:
        for t in texts:
            best = classifier.classify(t).classifications[0].categories[0]  # sorted by score, highest first
            print(f"{best.category_name}\t{best.score:.3f}\t{t}")


if __name__ == "__main__":
    main()
