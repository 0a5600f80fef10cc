"""MediaPipe's TextClassifier per text, its tokenizer included, against the int8 TFLite files in LiteRT.

One process, one pass over the same test texts, every runtime timed on each text in turn (so load
on a shared machine hits them alike), batch 1, after a warm-up. Rows:

- `mediapipe`: model_mediapipe.tflite in MediaPipe's TextClassifier, a string in (tokenizer + model at L);
- `mediapipe file, LiteRT`: the same file in LiteRT with tf-text's ids padded to L (the model alone);
- `int8 ids, natural length` / `int8 ids, length L`: model_int8.tflite in LiteRT, ids given;
- `text int8, LiteRT`: model_text_int8.tflite (tf-text tokenizer inside) when the export has it.

    python benchmarks/mediapipe_latency.py models/student export/student --texts 300
"""

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfkit import mediapipe_export
from tfkit.classifier import Classifier
from tfkit.runtimes import LiteRT, MediaPipe


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("export_dir", help="with model_mediapipe.tflite and model_int8.tflite")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/mediapipe_latency.json")
    args = parser.parse_args()

    classifier = Classifier.load(args.model_dir)
    tokenizer, length = classifier.tokenizer, classifier.tokenizer.max_length
    texts = classifier.splits().test.texts[: args.texts]
    export = Path(args.export_dir)
    ids = [{k: v.numpy() for k, v in tokenizer.encode(tf.constant([t])).items()} for t in texts]
    to_length = lambda a: np.pad(a, [(0, 0), (0, length - a.shape[1])]).astype(np.int32)  # 0-padded, as MediaPipe does
    padded = [{"token_ids": to_length(x["token_ids"] * x["padding_mask"]), "padding_mask": to_length(x["padding_mask"])} for x in ids]

    mediapipe = MediaPipe(export / "model_mediapipe.tflite")
    fixed = LiteRT(export / "model_mediapipe.tflite", signature=mediapipe_export.SIGNATURE)
    int8 = LiteRT(export / "model_int8.tflite")
    calls = {
        "mediapipe (string in, its tokenizer + model at L)": lambda i: mediapipe.predict([texts[i]]),
        "mediapipe file in LiteRT (ids at L, no tokenizer)": lambda i: fixed.runner(
            input_word_ids=padded[i]["token_ids"], input_mask=padded[i]["padding_mask"],
            input_type_ids=np.zeros_like(padded[i]["token_ids"])),
        "model_int8.tflite, ids at natural length": lambda i: int8.predict(ids[i]),
        "model_int8.tflite, ids at L": lambda i: int8.predict(padded[i]),
    }
    if (export / "model_text_int8.tflite").exists():
        text_int8 = LiteRT(export / "model_text_int8.tflite", text=True)
        calls["model_text_int8.tflite (string in, tf-text ops)"] = lambda i: text_int8.predict([texts[i]])

    times = {name: [] for name in calls}
    cpu = {name: 0.0 for name in calls}
    for name, call in calls.items():  # warm-up
        for i in range(5):
            call(i)
    for i in range(len(texts)):
        for name, call in calls.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            call(i)
            times[name].append(time.perf_counter() - t0)
            cpu[name] += cpu_seconds() - c0
    mediapipe.close()

    base = float(np.median(times["model_int8.tflite, ids at natural length"]))
    rows = {name: {"median_ms": 1000 * float(np.median(t)), "p90_ms": 1000 * float(np.percentile(t, 90)),
                   "vs_int8_natural": float(np.median(t)) / base, "cpu_per_wall": cpu[name] / float(np.sum(t))}
            for name, t in times.items()}
    print(f"{len(texts)} test texts of {args.model_dir}, max length {length}, batch 1, LiteRT 1 thread")
    print(f"{'':52}  median ms  p90 ms  vs int8  cpu/wall")
    for name, r in rows.items():
        print(f"{name:52}  {r['median_ms']:9.3f}  {r['p90_ms']:6.3f}  {r['vs_int8_natural']:6.2f}x  {r['cpu_per_wall']:8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model_dir, "texts": len(texts), "max_length": length, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
