"""Does the classifier work equally well for every kind of patient?

Metrics per subgroup (view position, sex, age band) and the false-positive rate
by detailed negative class. Labels are 0/1 (1 = pneumonia); probabilities in
[0, 1]; a prediction is positive when probability >= threshold. A metric needing
positives (negatives) in a group with fewer than ``min_count`` of them is a
string such as ``"too few positives (n=3)"`` instead of a number: a rate on a
handful of patients would read as a finding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pneumonia.evaluation.metrics import ranking_metrics, threshold_metrics

NOT_NORMAL = "No Lung Opacity / Not Normal"  # the detailed class file's names (stage_2_detailed_class_info.csv)
NORMAL = "Normal"


def _too_few(count: int, what: str, min_count: int) -> str | None:
    # Never fewer than one: with none, the rate is undefined whatever min_count says.
    return f"too few {what} (n={count})" if count < max(min_count, 1) else None


def subgroup_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | Sequence[str],
    threshold: float,
    min_count: int = 10,
) -> dict[str, dict[str, float | int | str]]:
    """Per group (sorted by name): n, positives, negatives, auroc, sensitivity, specificity.

    Sensitivity needs ``min_count`` positives, specificity ``min_count`` negatives,
    AUROC both; short of that the metric is the string "too few positives (n=3)"
    or "too few negatives (n=0)". Rates are fractions in [0, 1].
    """
    labels, probs, groups = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64), np.asarray(groups)
    if not labels.shape == probs.shape == groups.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape}, probs {probs.shape} and groups {groups.shape} must be 1-D, equal length"
        )
    result = {}
    for name in sorted(set(groups.tolist())):
        member = groups == name
        y, p = labels[member], probs[member]
        positives, negatives = int(y.sum()), int(len(y) - y.sum())
        few_positives = _too_few(positives, "positives", min_count)
        few_negatives = _too_few(negatives, "negatives", min_count)
        at_threshold = threshold_metrics(y, p, threshold)
        result[str(name)] = {
            "n": len(y),
            "positives": positives,
            "negatives": negatives,
            "auroc": few_positives or few_negatives or ranking_metrics(y, p)["auroc"],
            "sensitivity": few_positives or at_threshold["recall"],
            "specificity": few_negatives or at_threshold["specificity"],
        }
    return result


def age_band_labels(ages: Sequence[int | float | None], edges: Sequence[int] = (40, 60)) -> np.ndarray:
    """Age band of each patient (years): with edges (40, 60), "<40", "40-59", ">=60"; "unknown" if missing.

    A band "a-b" holds ages a <= age < b + 1 (integer years, as DICOM PatientAge).
    Missing means None, NaN or negative. No edges put every known age in "all".
    """
    edges = list(edges)
    if edges != sorted(set(edges)):
        raise ValueError(f"age band edges {edges} must be strictly increasing")
    if edges:
        names = [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    else:
        names = ["all"]
    known = [a is not None and not np.isnan(a) and a >= 0 for a in ages]
    # side="right": an age equal to an edge starts the next band (40 is in "40-59").
    bands = np.searchsorted(np.asarray(edges, float), [a if k else 0 for a, k in zip(ages, known)], side="right")
    return np.array([names[b] if k else "unknown" for b, k in zip(bands, known)], dtype=str)


def false_positive_rates_by_detailed_class(
    labels: np.ndarray,
    probs: np.ndarray,
    detailed_classes: np.ndarray | Sequence[str],
    threshold: float,
    min_count: int = 10,
) -> dict[str, dict[str, float | int | str]]:
    """False-positive rate among "No Lung Opacity / Not Normal" negatives against that among "Normal" ones.

    ``{"not_normal": {"n", "fpr"}, "normal": {"n", "fpr"}}``: n negatives (label 0)
    of that detailed class, fpr the fraction of them with probability >= threshold,
    or "too few negatives (n=...)" below ``min_count``. Not-normal films (other
    findings, devices) are expected to fool the classifier more often.
    """
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    detailed_classes = np.asarray(detailed_classes)
    if not labels.shape == probs.shape == detailed_classes.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape}, probs {probs.shape} and detailed_classes {detailed_classes.shape} "
            "must be 1-D, equal length"
        )
    result = {}
    for key, detailed in (("not_normal", NOT_NORMAL), ("normal", NORMAL)):
        member = (labels == 0) & (detailed_classes == detailed)
        n = int(member.sum())
        result[key] = {"n": n, "fpr": _too_few(n, "negatives", min_count) or float(np.mean(probs[member] >= threshold))}
    return result
