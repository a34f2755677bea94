"""The image-level decision: one calibrated probability of pneumonia, chosen on val.

Candidates (each a score per image, from the two models' raw logits):

- ``classifier``: the classifier's logit;
- ``detector``: the detector's image logit (the head that also gates its boxes);
- ``stacked``: a logistic regression on both logits.

Calibration maps a score to a probability: ``temperature`` (sigmoid(z / T): a
slope, no intercept), ``platt`` (sigmoid(a z + b), Platt 1999, with his smoothed
targets so separable data still give finite coefficients) and ``isotonic`` (a
monotone step map, scikit-learn's ``IsotonicRegression``). The stacked candidate
is its own Platt map in two dimensions. Every (candidate, map) pair is scored by
its out-of-fold log loss over ``folds`` stratified folds of val, so no image
scores a map that saw it; the pair with the lowest is refitted on the whole of val
and is :class:`Decision`. Its label threshold is chosen on val too (the operating
point reaching the target sensitivity). A :class:`Decision` is a few numbers: it
travels in the predictor's model file (:mod:`pneumonia.prediction.predictor`).

A probability from it means: among images like the val split (the same source,
rendering and prevalence of pneumonia), this fraction had pneumonia. At another
prevalence it is off by the ratio of the odds; :func:`at_prevalence` gives the
Bayes-corrected value, which the evaluate stage reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from pneumonia.evaluation.calibration import binary_nll, fit_temperature, probability
from pneumonia.core.errors import DatasetError

CANDIDATES = ("classifier", "detector", "stacked")
METHODS = {"classifier": ("temperature", "platt", "isotonic"), "detector": ("temperature", "platt", "isotonic"),
           "stacked": ("platt",)}
PROBABILITY_FLOOR = 1e-3
"""Isotonic maps are clipped to [floor, 1 - floor]: a step map fitted on a few hundred images says 0 or 1
where it saw one class only, which no finite sample justifies (and which makes the log loss infinite)."""


@dataclass(frozen=True)
class Decision:
    """score = weights . (classifier logit, detector logit) + intercept; probability = sigmoid(score), or the
    isotonic map of the score when ``isotonic`` holds its knots; positive when probability >= ``threshold``."""

    source: str  # one of CANDIDATES
    method: str  # temperature, platt or isotonic
    weights: tuple[float, float]
    intercept: float
    isotonic: tuple[tuple[float, ...], tuple[float, ...]] | None  # knots (score, probability), ascending
    threshold: float  # on the probability, chosen on val

    def scores(self, classifier_logits: np.ndarray, detector_logits: np.ndarray) -> np.ndarray:
        return (self.weights[0] * np.asarray(classifier_logits, np.float64)
                + self.weights[1] * np.asarray(detector_logits, np.float64) + self.intercept)

    def probability(self, classifier_logits: np.ndarray, detector_logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities in [0, 1] (float64)."""
        z = self.scores(classifier_logits, detector_logits)
        if self.isotonic is None:
            return probability(z)
        # np.interp clips outside the knots: scikit-learn's out_of_bounds="clip"
        return np.interp(z, self.isotonic[0], self.isotonic[1])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Decision:
        knots = value.get("isotonic")
        return cls(
            source=str(value["source"]), method=str(value["method"]),
            weights=(float(value["weights"][0]), float(value["weights"][1])), intercept=float(value["intercept"]),
            isotonic=None if knots is None else (tuple(map(float, knots[0])), tuple(map(float, knots[1]))),
            threshold=float(value["threshold"]),
        )


def _platt_logistic(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression with Platt's smoothed targets, (N+ + 1)/(N+ + 2) and 1/(N- + 2).

    scikit-learn's LogisticRegression takes no soft targets, so each image enters twice, as a positive
    weighted by its target and as a negative weighted by one minus it: the same likelihood, unpenalized.
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    target = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    doubled = np.concatenate([features, features])
    classes = np.concatenate([np.ones(len(labels)), np.zeros(len(labels))])
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)  # C = inf: no penalty
    fit.fit(doubled, classes, sample_weight=np.concatenate([target, 1 - target]))
    return fit.coef_[0].astype(np.float64), float(fit.intercept_[0])


def _source_weights(source: str, scale: float = 1.0) -> tuple[float, float]:
    return (scale, 0.0) if source == "classifier" else (0.0, scale)


def fit_decision(source: str, method: str, labels: np.ndarray, logits: np.ndarray, threshold: float = 0.5) -> Decision:
    """Fit ``method`` for ``source`` on ``labels`` and ``logits`` (N x 2: classifier, detector)."""
    labels = np.asarray(labels).astype(np.int64)
    logits = np.asarray(logits, np.float64)
    if source == "stacked":
        coef, intercept = _platt_logistic(logits, labels)
        return Decision(source, method, (float(coef[0]), float(coef[1])), intercept, None, threshold)
    z = logits[:, CANDIDATES.index(source)]
    if method == "temperature":
        return Decision(source, method, _source_weights(source, 1 / fit_temperature(labels, z)), 0.0, None, threshold)
    if method == "platt":
        coef, intercept = _platt_logistic(z[:, None], labels)
        return Decision(source, method, _source_weights(source, float(coef[0])), intercept, None, threshold)
    if method == "isotonic":
        fit = IsotonicRegression(y_min=PROBABILITY_FLOOR, y_max=1 - PROBABILITY_FLOOR, out_of_bounds="clip").fit(z, labels)
        knots = (tuple(map(float, fit.X_thresholds_)), tuple(map(float, fit.y_thresholds_)))
        return Decision(source, method, _source_weights(source), 0.0, knots, threshold)
    raise ValueError(f"unknown calibration method {method!r}; choose one of temperature, platt, isotonic")


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood in nats, probabilities clipped to [1e-6, 1 - 1e-6]."""
    clipped = np.clip(np.asarray(probs, np.float64), 1e-6, 1 - 1e-6)
    return binary_nll(labels, logit(clipped))


def out_of_fold(source: str, method: str, labels: np.ndarray, logits: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each val image's probability from the map fitted on the other folds (stratified, seeded)."""
    probs = np.empty(len(labels))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(logits, labels):
        decision = fit_decision(source, method, labels[fit_rows], logits[fit_rows])
        probs[held_rows] = decision.probability(logits[held_rows, 0], logits[held_rows, 1])
    return probs


def choose_decision(
    labels: np.ndarray, logits: np.ndarray, folds: int, seed: int, threshold_for
) -> tuple[Decision, list[dict[str, Any]]]:
    """The (candidate, map) of lowest out-of-fold log loss on val, refitted on all of val.

    ``logits``: N x 2 (classifier, detector) of the val images; ``threshold_for(labels, probs)`` chooses the label
    threshold on the refitted probabilities. Returns the decision and every pair's out-of-fold figures.
    """
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < folds:
        raise DatasetError(
            f"val has {counts[1]} positive and {counts[0]} negative images: too few for {folds}-fold "
            "cross-validation of the calibration; enlarge the val split or lower decide.folds"
        )
    from pneumonia.evaluation.calibration import expected_calibration_error  # one home for ECE
    from pneumonia.evaluation.bootstrap import auroc

    compared = []
    for source in CANDIDATES:
        for method in METHODS[source]:
            probs = out_of_fold(source, method, labels, logits, folds, seed)
            compared.append({"source": source, "method": method, "log_loss": log_loss(labels, probs),
                             "ece_15_bins": expected_calibration_error(labels, probs),
                             "auroc": auroc(labels, probs)})
    best = min(compared, key=lambda c: c["log_loss"])
    draft = fit_decision(best["source"], best["method"], labels, logits)
    threshold = threshold_for(labels, draft.probability(logits[:, 0], logits[:, 1]))
    return fit_decision(best["source"], best["method"], labels, logits, threshold), compared


def at_prevalence(probs: np.ndarray, trained_prevalence: float, prevalence: float) -> np.ndarray:
    """Probabilities moved from the prevalence they were calibrated at to another (Bayes' rule on the odds)."""
    if not (0 < trained_prevalence < 1 and 0 < prevalence < 1):
        raise ValueError("prevalences must be in (0, 1)")
    shift = logit(prevalence) - logit(trained_prevalence)
    return probability(logit(np.clip(np.asarray(probs, np.float64), 1e-12, 1 - 1e-12)) + shift)
