"""Use tfkit's pieces inside your own Keras `fit` script: pretrained backbone, tf.data pipeline, distillation.

    python examples/fit_your_own.py --data my_reviews.csv --epochs 1

Any CSV/TSV/JSONL with `text` and `label` columns works (or the built-in `rotten_tomatoes`).
"""

import argparse

import keras
import numpy as np

import tfkit
from tfkit.assets import default_teacher_dir
from tfkit.classifier import MacroF1, build_classifier, classification_metrics, predict_logits
from tfkit.distill import Distiller
from tfkit.student import make_student, student_shape
from tfkit.loop import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=2000, help="training examples to use (keeps the demo short)")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    splits = tfkit.load_splits(args.data)
    train_texts, train_labels = splits.train.texts[: args.limit], splits.train.labels[: args.limit]
    backbone, tokenizer = tfkit.load_backbone(default_teacher_dir(), max_length=64)
    n = len(splits.label_names)

    # A teacher: keras-hub backbone + head, plain compile/fit on tfkit's length-bucketed tf.data.
    teacher = build_classifier(backbone, n)
    train_ds = tfkit.make_dataset(tokenizer, train_texts, train_labels, batch_size=32, shuffle=True)
    teacher.compile(optimizer=make_optimizer(5e-5, args.epochs * len(train_ds)),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy", MacroF1(n)])
    teacher.fit(train_ds, epochs=args.epochs)

    # A 2-layer student distilled from cached teacher logits, again with plain fit.
    logits = predict_logits(teacher, tokenizer, train_texts)
    student = build_classifier(make_student(backbone, student_shape(backbone, "from-teacher", layers=2)), n)
    distiller = Distiller(student, temperature=3.0, alpha=0.5)
    distill_ds = tfkit.make_dataset(tokenizer, train_texts, {"label": train_labels, "teacher_logits": logits}, 32, shuffle=True)
    distiller.compile(optimizer=make_optimizer(1e-4, args.epochs * len(distill_ds)), metrics=["accuracy"])
    distiller.fit(distill_ds, epochs=args.epochs)

    for name, model in (("teacher", teacher), ("student", student)):
        predictions = predict_logits(model, tokenizer, splits.test.texts).argmax(-1)
        m = classification_metrics(splits.test.labels, predictions, splits.label_names)
        print(f"{name}: test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {model.count_params():,} parameters")
    student.save("student.keras")  # keras.saving.load_model loads it after `import tfkit.backbone`
    print("saved student.keras;", np.round(keras.ops.convert_to_numpy(keras.ops.softmax(student.predict(
        tokenizer.encode(np.array(["A warm, funny, wonderful film."]))))), 3))


if __name__ == "__main__":
    main()
