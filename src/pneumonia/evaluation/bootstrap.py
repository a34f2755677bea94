"""Bootstrap percentile confidence intervals over patients.

Each resample draws the patients with replacement (one row of an index matrix
from ``np.random.default_rng(seed)``); the interval is the alpha/2 and
1 - alpha/2 percentiles of the statistic over the resamples where it is defined.
A resample with one class only has no AUROC, for instance: it is skipped and
the interval says how many resamples it used.

The statistics below are vectorised: given 1-D ``labels`` and ``probs`` they
return a float, or None where undefined; given 2-D arrays (one resample per
row) they return one value per row, NaN where undefined, in a few array
operations for all rows at once. Written by hand for two reasons: torchmetrics and scikit-learn score
one resample per call (thousands of Python-level calls per interval), and torchmetrics' AUROC sums
its trapezoids in float32 (1.0000001 on a perfect ranking). :func:`auroc` is therefore the one AUROC
of every report, point estimates included (:func:`pneumonia.evaluation.metrics.ranking_metrics`);
tests/test_bootstrap.py checks it against scikit-learn to 1e-12.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], "float | None | np.ndarray"]
BLOCK_ELEMENTS = 2_000_000  # resamples x patients evaluated per step: bounds memory on large splits


class Interval(NamedTuple):
    low: float | None  # None when no resample had the statistic defined
    high: float | None
    resamples_used: int  # resamples where the statistic was defined


def batched(statistic: Statistic) -> Statistic:
    """Mark ``statistic`` as taking (resamples x patients) arrays and returning one value per row (NaN: undefined)."""
    statistic.batched = True  # type: ignore[attr-defined]
    return statistic


def _rows(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    # 1-D input is one row; remember it so the result goes back as a scalar.
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim not in (1, 2):
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be equal-shaped 1-D or 2-D arrays")
    single = labels.ndim == 1
    return np.atleast_2d(labels).astype(bool), np.atleast_2d(probs), single


def _result(values: np.ndarray, single: bool) -> float | None | np.ndarray:
    if not single:
        return values
    return None if np.isnan(values[0]) else float(values[0])


def _tie_groups(sorted_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last column of each entry's run of equal values, in each sorted row."""
    n = sorted_probs.shape[1]
    column = np.broadcast_to(np.arange(n), sorted_probs.shape)
    starts = np.ones(sorted_probs.shape, dtype=bool)
    starts[:, 1:] = sorted_probs[:, 1:] != sorted_probs[:, :-1]
    ends = np.ones(sorted_probs.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, column, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, column, n - 1)[:, ::-1], axis=1)[:, ::-1]
    return first, last


def _sorted_rows(labels: np.ndarray, probs: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-probs if descending else probs, axis=1, kind="stable")
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(probs, order, axis=1)


@batched
def auroc(labels: np.ndarray, probs: np.ndarray) -> float | None | np.ndarray:
    """Area under the ROC curve by the Mann-Whitney rank formula; undefined without both classes.

    AUROC = (sum of the positives' ranks - P(P+1)/2) / (P N), ranks from 1 in
    ascending probability, tied probabilities sharing their average rank (a tie
    counts one half, as scikit-learn's trapezoids do).
    """
    labels, probs, single = _rows(labels, probs)
    y, p = _sorted_rows(labels, probs, descending=False)
    first, last = _tie_groups(p)
    ranks = (first + last) / 2 + 1
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        values = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    values[(positives == 0) | (negatives == 0)] = np.nan
    return _result(values, single)


@batched
def average_precision(labels: np.ndarray, probs: np.ndarray) -> float | None | np.ndarray:
    """Average precision, sum over thresholds of (recall step) x precision, as scikit-learn's.

    Thresholds are the distinct probabilities; a run of tied probabilities is one
    step. Each positive contributes 1/P times the precision at the threshold equal
    to its own probability, so AP = mean over positives of that precision.
    Undefined (None / NaN) without a positive.
    """
    labels, probs, single = _rows(labels, probs)
    y, p = _sorted_rows(labels, probs, descending=True)
    _, last = _tie_groups(p)
    true_positives = np.cumsum(y, axis=1)
    # Precision with every patient down to the end of this entry's tie run predicted positive.
    precision = np.take_along_axis(true_positives, last, axis=1) / (last + 1)
    positives = y.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (precision * y).sum(axis=1) / positives
    return _result(values, single)


def sensitivity_at(threshold: float) -> Statistic:
    """The statistic: fraction of positives with probability >= ``threshold``; undefined without a positive."""

    @batched
    def sensitivity(labels: np.ndarray, probs: np.ndarray) -> float | None | np.ndarray:
        labels, probs, single = _rows(labels, probs)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = ((probs >= threshold) & labels).sum(axis=1) / labels.sum(axis=1)
        return _result(values, single)

    return sensitivity


def specificity_at(threshold: float) -> Statistic:
    """The statistic: fraction of negatives with probability < ``threshold``; undefined without a negative."""

    @batched
    def specificity(labels: np.ndarray, probs: np.ndarray) -> float | None | np.ndarray:
        labels, probs, single = _rows(labels, probs)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = ((probs < threshold) & ~labels).sum(axis=1) / (~labels).sum(axis=1)
        return _result(values, single)

    return specificity


def resample_indices(patients: int, resamples: int, seed: int) -> np.ndarray:
    """A (resamples x patients) matrix of patient indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, patients, size=(resamples, patients))


def _values(labels: np.ndarray, probs: np.ndarray, statistic: Statistic, index: np.ndarray) -> np.ndarray:
    """The statistic on each resample (row of ``index``), NaN where undefined."""
    if not getattr(statistic, "batched", False):
        # Any scalar statistic (e.g. from pneumonia.evaluation.metrics) works, one resample at a time: slow.
        values = [statistic(labels[row], probs[row]) for row in index]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    step = max(1, BLOCK_ELEMENTS // max(index.shape[1], 1))
    return np.concatenate(
        [statistic(labels[index[i : i + step]], probs[index[i : i + step]]) for i in range(0, len(index), step)]
    )


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> Interval:
    """The alpha/2 and 1 - alpha/2 percentiles of the defined (non-NaN) ``values``."""
    defined = values[~np.isnan(values)]
    if len(defined) == 0:
        return Interval(None, None, 0)
    low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(float(low), float(high), len(defined))


def _check(labels: np.ndarray, probs: np.ndarray, resamples: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != probs.shape or len(labels) == 0:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be non-empty 1-D arrays of equal length")
    if resamples < 1 or not 0 < alpha < 1:
        raise ValueError(f"resamples ({resamples}) must be >= 1 and alpha ({alpha}) in (0, 1)")
    return labels, probs


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    statistic: Statistic,
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """Percentile (1 - alpha) interval of ``statistic(labels, probs) -> float | None`` over patient resamples.

    ``statistic`` is any such function (called once per resample), or one of this
    module's vectorised statistics (called once for all). Resamples where it is
    undefined are skipped; ``Interval.resamples_used`` counts the rest, and low and
    high are None if none is left. Unpack as ``low, high, used = bootstrap_ci(...)``.
    """
    labels, probs = _check(labels, probs, resamples, alpha)
    index = resample_indices(len(labels), resamples, seed)
    return percentile_interval(_values(labels, probs, statistic, index), alpha)


def bootstrap_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[str, float],
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict]:
    """Intervals for AUROC, average precision, and sensitivity and specificity at each named threshold.

    ``{"auroc": {"low", "high", "resamples_used"}, "average_precision": {...},
    "<name>": {"sensitivity": {...}, "specificity": {...}}}``. All statistics use
    the same resamples, so their intervals are paired.
    """
    labels, probs = _check(labels, probs, resamples, alpha)
    index = resample_indices(len(labels), resamples, seed)

    def interval(statistic: Statistic) -> dict[str, float | int | None]:
        return percentile_interval(_values(labels, probs, statistic, index), alpha)._asdict()

    result: dict[str, dict] = {"auroc": interval(auroc), "average_precision": interval(average_precision)}
    for name, threshold in thresholds.items():
        result[name] = {
            "sensitivity": interval(sensitivity_at(threshold)),
            "specificity": interval(specificity_at(threshold)),
        }
    return result
