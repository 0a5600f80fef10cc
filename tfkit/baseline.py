"""A one-second baseline beside every teacher: TF-IDF word 1-2-grams and logistic regression.

A fine-tuned BERT costs minutes of training and megabytes of model; on some data a bag of words
does as well. Every `tfkit train` fits this baseline on the same split (scikit-learn, seconds)
and reports it next to the teacher, so a user sees whether BERT paid, and is told plainly when it
did not.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from tfkit.classifier import classification_metrics
from tfkit.data import Splits

log = logging.getLogger("tfkit")
DESCRIPTION = "TF-IDF word 1-2-grams + logistic regression (scikit-learn)"


def fit_baseline(splits: Splits, balanced: bool = False, seed: int = 0) -> dict:
    """Validation and test metrics of the baseline trained on `splits.train`, and its fit time.

    Args:
        balanced: weight classes inversely to their frequency, as the teacher does with --class-weight balanced.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    start = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(max_iter=2000, class_weight="balanced" if balanced else None,
                                             random_state=seed))
    model.fit(splits.train.texts, splits.train.labels)
    result = {"model": DESCRIPTION, "class_weight": "balanced" if balanced else None}
    for name in ("val", "test"):
        part = getattr(splits, name)
        result[name] = classification_metrics(part.labels, np.asarray(model.predict(part.texts)), splits.label_names)
    result["seconds"] = time.perf_counter() - start
    return result


def compare(teacher: dict, baseline: dict) -> str | None:
    """A plain warning when the teacher's test macro-F1 does not beat the baseline's, else None."""
    ours, theirs = teacher["test"]["macro_f1"], baseline["test"]["macro_f1"]
    if ours > theirs:
        return None
    return (f"the teacher does not beat the TF-IDF baseline on test macro-F1 ({ours:.4f} vs {theirs:.4f}): "
            "more data or epochs, --class-weight balanced, or another --pretrained checkpoint may help; "
            "for this data the baseline may be all you need")
