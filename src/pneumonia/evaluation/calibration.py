"""Are the probabilities honest? Brier score, expected calibration error, temperature scaling.

Labels are 0/1 (1 = pneumonia); probabilities in [0, 1]; logits are the
network's raw outputs, probability = sigmoid(logit). Bins are ``bins``
equal-width intervals [i/bins, (i+1)/bins) of probability; the last also holds 1.0.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

TEMPERATURE_BOUNDS = (1e-2, 1e2)  # searched on log T; a fit at a bound means the data cannot pin T down


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be 1-D arrays of equal length")
    if len(probs) and not (probs.min() >= 0 and probs.max() <= 1):
        raise ValueError("probs must be probabilities in [0, 1]; pass sigmoid(logits), not logits")
    return labels, probs


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean squared difference between probability and label, in [0, 1] (lower is better); None if empty."""
    labels, probs = _checked(labels, probs)
    return float(np.mean((probs - labels) ** 2)) if len(labels) else None


def _bin_sums(labels: np.ndarray, probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: patient count, sum of probabilities, sum of labels."""
    if bins < 1:
        raise ValueError(f"bins ({bins}) must be >= 1")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="right" puts a probability equal to an edge in the bin that starts there; clip puts 1.0 in the last.
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    return count, np.bincount(which, probs, minlength=bins), np.bincount(which, labels, minlength=bins)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float | None:
    """ECE = sum over bins of (n_bin / N) |observed fraction positive - mean probability|, in [0, 1]; None if empty."""
    labels, probs = _checked(labels, probs)
    if len(labels) == 0:
        return None
    count, prob_sum, label_sum = _bin_sums(labels, probs, bins)
    # (n_bin / N) |label_sum / n_bin - prob_sum / n_bin| = |label_sum - prob_sum| / N; empty bins add 0.
    return float(np.abs(label_sum - prob_sum).sum() / len(labels))


def reliability_curve(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[dict[str, float | int]]:
    """Points of a reliability diagram, one per non-empty bin (an empty bin has no mean to plot).

    Each: ``bin_centre``, ``mean_predicted`` (mean probability), ``observed_fraction``
    (fraction of positives) and ``count`` (patients in the bin). A calibrated model
    has observed_fraction close to mean_predicted.
    """
    labels, probs = _checked(labels, probs)
    count, prob_sum, label_sum = _bin_sums(labels, probs, bins)
    return [
        {
            "bin_centre": (i + 0.5) / bins,
            "mean_predicted": float(prob_sum[i] / count[i]),
            "observed_fraction": float(label_sum[i] / count[i]),
            "count": int(count[i]),
        }
        for i in np.flatnonzero(count)
    ]


def binary_nll(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per patient) of the labels under sigmoid(logits)."""
    labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    # -[y log s(z) + (1-y) log(1-s(z))] = log(1 + e^z) - y z, stable for large |z|.
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of sigmoid(logit / T); fit it on val only.

    T > 1 softens over-confident probabilities, T < 1 sharpens them; the ranking
    (AUROC) never changes. Searched on log T within :data:`TEMPERATURE_BOUNDS`;
    perfectly separated labels drive T to the lower bound.
    """
    labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != logits.shape or len(np.unique(labels)) != 2:
        raise ValueError(
            f"fit_temperature needs 1-D labels and logits of equal length with both classes present "
            f"(got labels {labels.shape}, logits {logits.shape}, classes {np.unique(labels).tolist()}); "
            "fit on a split with positives and negatives"
        )
    bounds = np.log(TEMPERATURE_BOUNDS)
    fit = minimize_scalar(
        lambda log_t: binary_nll(labels, logits / np.exp(log_t)),
        bounds=tuple(bounds),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(fit.x))


def probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities sigmoid(logit / T) in [0, 1], float64; T = 1 leaves them unchanged.

    The one place a logit becomes a probability in numpy (scipy's ``expit``: no overflow): the classifier's
    (with its fitted T), the detector's image logit, and the decision's calibrated score. Inside a network
    on its device the same is ``torch.sigmoid`` (the CAM's probability, the detector's decoding).
    """
    if not temperature > 0:
        raise ValueError(f"temperature {temperature} must be > 0")
    return expit(np.asarray(logits, dtype=np.float64) / temperature)
