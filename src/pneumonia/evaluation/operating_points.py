"""Operating points: thresholds chosen on one split, and the metrics at a threshold.

Labels are 0/1 (1 = pneumonia); probabilities in [0, 1]; a prediction is positive
when probability >= threshold. The choosers read only the labels and
probabilities they are given: the evaluate stage passes val, then applies the
thresholds to test, so no test label can move a threshold.
"""

from __future__ import annotations

import numpy as np

from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.metrics import rate, threshold_metrics


def _classes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positives' and the negatives' probabilities."""
    labels, probs = np.asarray(labels).astype(bool), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be 1-D arrays of equal length")
    return probs[labels], probs[~labels]


def _require(count: int, what: str, purpose: str) -> None:
    if count == 0:
        raise DatasetError(
            f"cannot choose {purpose}: the labels given have no {what} patient; "
            "choose thresholds on a split with both classes (enlarge the val split)"
        )


def operating_point(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy at ``threshold``, with the confusion matrix.

    Rates are fractions in [0, 1]; a rate whose denominator is zero is ``None``
    (:func:`pneumonia.evaluation.metrics.rate`): sensitivity with no positive patient,
    specificity with no negative one, PPV with no positive prediction, NPV with no
    negative prediction, F1 with neither a positive patient nor a positive prediction.
    """
    m = threshold_metrics(labels, probs, threshold)
    tp, fp, tn, fn = m["tp"], m["fp"], m["tn"], m["fn"]
    return {
        "threshold": float(threshold),
        "sensitivity": m["recall"],
        "specificity": m["specificity"],
        "ppv": m["precision"],
        "npv": rate(tn, tn + fn),
        "f1": m["f1"],
        "accuracy": m["accuracy"],
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def threshold_for_sensitivity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The highest threshold, among ``probs``, whose sensitivity on these data is >= ``target``.

    Sensitivity only falls as the threshold rises, so the highest such threshold
    gives the best specificity that still reaches ``target`` (a fraction in (0, 1]).
    It is the k-th highest positive probability, k the fewest positives that reach it.
    Raises :class:`DatasetError` when there is no positive patient.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity {target} must be in (0, 1]")
    positives, _ = _classes(labels, probs)
    _require(len(positives), "positive", f"a threshold for sensitivity {target}")
    # k/P computed as the sensitivity itself is, so "reaches target" means the same float comparison.
    reached = np.arange(1, len(positives) + 1) / len(positives) >= target
    k = int(np.argmax(reached)) + 1
    return float(np.sort(positives)[::-1][k - 1])


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold, among ``probs``, maximising Youden's J = sensitivity + specificity - 1.

    Ties go to the higher threshold (fewer positive predictions). Raises
    :class:`DatasetError` unless both classes are present.
    """
    positives, negatives = _classes(labels, probs)
    _require(len(positives), "positive", "Youden's threshold")
    _require(len(negatives), "negative", "Youden's threshold")
    candidates = np.unique(np.concatenate([positives, negatives]))  # ascending
    tp = len(positives) - np.searchsorted(np.sort(positives), candidates, side="left")
    fp = len(negatives) - np.searchsorted(np.sort(negatives), candidates, side="left")
    # J * P * N in integers: exact, so ties are ties and not rounding noise.
    j = tp * len(negatives) - fp * len(positives)
    best = np.flatnonzero(j == j.max())[-1]  # the last of the ascending candidates: the highest
    return float(candidates[best])


def threshold_name(threshold: float) -> str:
    """A key without dots, so `dvc metrics` flattening stays unambiguous: 0.5 -> "0p50"."""
    return f"{threshold:.2f}".replace(".", "p")


def choose_thresholds(
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    target_sensitivity: float,
    fixed: tuple[float, ...] = (0.5, 0.25),
) -> dict[str, float]:
    """Named thresholds chosen on val only.

    ``{"0p50": 0.5, "0p25": 0.25, "sensitivity_0p90": t, "youden": u}``: the
    ``fixed`` thresholds, the one reaching ``target_sensitivity`` and Youden's.
    """
    chosen = {threshold_name(t): float(t) for t in fixed}
    chosen[f"sensitivity_{threshold_name(target_sensitivity)}"] = threshold_for_sensitivity(
        val_labels, val_probs, target_sensitivity
    )
    chosen["youden"] = youden_threshold(val_labels, val_probs)
    return chosen


def operating_points(
    labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, float]
) -> dict[str, dict[str, float | int | None]]:
    """:func:`operating_point` at each named threshold, e.g. of :func:`choose_thresholds`."""
    return {name: operating_point(labels, probs, t) for name, t in thresholds.items()}
