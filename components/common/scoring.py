"""Scoring one classifier on a labelled test set: quality metrics, calibration, bootstrap, CPU latency.

Shared by evaluate (which compares the candidates) and register (which re-scores the new model and the
champion on the same test split). Light to import: numpy, scikit-learn and TensorFlow are imported where they
are used, so that evaluate's params.py can take the metric names from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# The scalar metrics of every scored model, in report order: name -> True when higher is better.
# Evaluate's `selection_metric` and register's gate use one of these.
METRIC_DIRECTIONS = {
    "accuracy": True,
    "top_k_accuracy": True,
    "macro_f1": True,
    "macro_precision": True,
    "macro_recall": True,
    "log_loss": False,
    "ece": False,
}
DEFAULT_METRIC = "accuracy"  # evaluate's default selection_metric; register's for a model without evaluation.json
DEFAULT_TOP_K = 3


def load_test_arrays(examples_dir: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The whole `split` of an `examples` artifact as (uint8 images [N,S,S,3], int labels [N], class names)."""
    import numpy as np

    from tlpipe.components.common.examples import load_split, read_schema

    classes = list(read_schema(examples_dir)["classes"])
    images, labels = [], []
    for image, label in load_split(examples_dir, split).as_numpy_iterator():
        images.append(image)
        labels.append(int(label))
    if not images:
        raise ValueError(f"split {split!r} of {examples_dir} has no examples: nothing to evaluate on")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def compiled_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A `tf.function` around the Keras model in inference mode (no `model.predict` overhead per call)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(batch):
        return model(batch, training=False)

    return lambda images: forward(tf.convert_to_tensor(images, dtype=tf.float32)).numpy()


def predict_proba(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for all `images`, in batches."""
    import numpy as np

    out = [predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float64)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """The reliability diagram: per confidence bin (low, high] its image count, accuracy and mean confidence."""
    import numpy as np

    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        rows.append({"low": float(lo), "high": float(hi), "count": int(in_bin.sum()),
                     "accuracy": float(correct[in_bin].mean()) if in_bin.any() else None,
                     "confidence": float(confidence[in_bin].mean()) if in_bin.any() else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| per confidence bin, weighted by the bin's share of examples."""
    return float(sum(b["count"] / len(labels) * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, bins) if b["count"]))


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the `k` highest scores."""
    import numpy as np

    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str],
                           top_k: int = DEFAULT_TOP_K) -> dict:
    """Accuracy, top-k accuracy, macro and per-class precision/recall/F1, log loss, ECE, confusion matrix.

    The macro means are over the classes present in `labels`: a class without a single image has no recall
    to measure, and counting it as 0 would understate every model alike. Those classes are listed in
    `absent_classes` (their per-class rows stay, with support 0).
    """
    import numpy as np
    from sklearn import metrics as skm

    n = len(classes)
    if probs.ndim != 2 or probs.shape[1] != n:
        raise ValueError(f"model outputs {probs.shape[1:]} scores per image but the test set has {n} classes "
                         f"{classes}: the model was trained on another class list")
    pred = probs.argmax(axis=1)
    everything = list(range(n))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=everything, zero_division=0)
    present = np.isin(everything, labels)
    k = min(top_k, n)
    clipped = np.clip(probs, 1e-7, 1.0)
    return {
        "accuracy": float((pred == labels).mean()),
        "top_k_accuracy": top_k_accuracy(probs, labels, k),
        "top_k": k,
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "absent_classes": [c for c, here in zip(classes, present, strict=True) if not here],
        "log_loss": float(skm.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=everything)),
        "ece": expected_calibration_error(probs, labels),
        "num_examples": int(len(labels)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)},
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=everything).tolist(),
    }


def precision_recall_curves(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """One-vs-rest precision-recall curve and average precision per class present in `labels`."""
    from sklearn import metrics as skm

    curves = {}
    for k, name in enumerate(classes):
        truth = labels == k
        if truth.any():
            precision, recall, _ = skm.precision_recall_curve(truth, probs[:, k])
            curves[name] = {"precision": precision.tolist(), "recall": recall.tolist(),
                            "average_precision": float(skm.average_precision_score(truth, probs[:, k]))}
    return curves


def most_confused_pairs(confusion: list[list[int]], classes: list[str], limit: int = 3) -> list[dict]:
    """The off-diagonal cells with the most errors: [{"true", "predicted", "count"}], largest first."""
    cells = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[t], "predicted": classes[p], "true_index": t, "predicted_index": p, "count": count}
            for count, t, p in cells[:limit]]


def bootstrap_difference(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Accuracy difference a - b on the same examples and its paired bootstrap 95 % interval."""
    import numpy as np

    correct_a = np.asarray(correct_a, dtype=np.float64)
    correct_b = np.asarray(correct_b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct_a), size=(resamples, len(correct_a)))
    diffs = correct_a[idx].mean(axis=1) - correct_b[idx].mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(correct_a.mean() - correct_b.mean()), float(low), float(high)


def measure_latency(predict: Callable[[np.ndarray], np.ndarray], sample: np.ndarray, batch_size: int,
                    repeats: int = 30, warmup: int = 3) -> dict:
    """Median and p90 wall time of `predict` on one batch, in ms per batch and per image."""
    import numpy as np

    batch = np.resize(sample, (batch_size, *sample.shape[1:])).astype(np.float32)
    for _ in range(warmup):
        predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    median, p90 = (float(v) for v in np.percentile(times, [50, 90]))
    return {"batch_size": batch_size, "median_ms": median, "p90_ms": p90,
            "median_ms_per_image": median / batch_size, "p90_ms_per_image": p90 / batch_size}
