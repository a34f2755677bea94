"""Classification metrics for a binary classifier's probabilities.

Labels are 0/1 (1 = pneumonia, "Lung Opacity"); probabilities in [0, 1]. A
prediction is positive when probability >= threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from pneumonia.evaluation.bootstrap import auroc


def rate(numerator: int, denominator: int) -> float | None:
    """A rate from confusion counts; ``None`` when it is undefined on these data (0/0: e.g. sensitivity with no
    positive patient, PPV with no positive prediction), which the reports show as undefined. The one convention
    for every rate (:mod:`pneumonia.evaluation.bootstrap`'s resampled rates are NaN where this is None)."""
    return numerator / denominator if denominator else None


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Confusion matrix and the rates derived from it at one threshold (``None`` where undefined: :func:`rate`)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(probs) >= threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    tn = int(np.sum(~predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    return {
        "threshold": float(threshold),
        "accuracy": rate(tp + tn, len(labels)),
        "precision": rate(tp, tp + fp),
        "recall": rate(tp, tp + fn),  # sensitivity
        "specificity": rate(tn, tn + fp),
        "f1": rate(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def ranking_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics: AUROC (:func:`pneumonia.evaluation.bootstrap.auroc`, the one AUROC of every report)
    and average precision (torchmetrics)."""
    p, t = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    return {"auroc": auroc(labels, probs), "average_precision": float(binary_average_precision(p, t))}


def roc_curve_points(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    p, t = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    fpr, tpr, thresholds = binary_roc(p, t)
    return [{"fpr": float(f), "tpr": float(r), "threshold": float(h)} for f, r, h in zip(fpr, tpr, thresholds)]


def pr_curve_points(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    p, t = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    precision, recall, thresholds = binary_precision_recall_curve(p, t)
    # torchmetrics appends a final (precision=1, recall=0) point without a threshold.
    return [
        {"recall": float(r), "precision": float(q), "threshold": float(h)}
        for q, r, h in zip(precision[:-1], recall[:-1], thresholds)
    ]
