"""Which boxes an image keeps: an image-score gate and a box-score threshold, chosen together on val.

An image keeps its boxes with score >= ``box_threshold`` only when its image score (the detector's
image probability) is >= ``image_threshold`` (0 = no gate): the challenge's winners gated their
detectors with an image-level classifier in this way. :class:`ThresholdRule` says how the detect stage
chooses the pair: the gate at the image-probability threshold that reaches ``evaluate.target_sensitivity``
on val (``gate_sensitivity``), the box threshold among ``detect.score_thresholds`` by the best val RSNA
score under that gate. Without ``gate_sensitivity`` the gate is chosen by the score too, among the same
candidates and 0 (:func:`choose_box_thresholds`).

The RSNA score depends on prevalence (an image without truth counts only when it gets a box, and then
scores 0), so the best pair does too: with ``prevalence`` the score is val's reweighted to it
(:func:`~pneumonia.evaluation.box_metrics.prevalence_weights`, ``detect.threshold_prevalence``; the
train split's by default), an estimate of the score on images drawn at that prevalence.

Why the gate sits at an operating point: ``benchmarks/prevalence_shift.json`` (val drawn at 35 %
positives, test at 12 %) shows that reweighting removes the failures that val's own prevalence causes
(no gate at all), but a score-chosen gate still jumps between neighbouring candidates with the val draw,
a miss that reweighting even to the true test prevalence does not cure; a gate at the image-probability
threshold of a target sensitivity reads positives only, so does not move with prevalence, and stayed
within 0.05 of the best on test in every draw. ``decide`` gates ``predict``'s boxes the same way (its
decision at ``evaluate.target_sensitivity``) and reweights the box threshold under it; this pair is the
detector's own, reported as "detector alone".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pneumonia.detection.detector import ImageDetections
from pneumonia.evaluation.box_metrics import (
    XYWH, box_threshold_sweep, prevalence_weights, rsna_score, target_prevalence,
)
from pneumonia.evaluation.operating_points import threshold_for_sensitivity

__all__ = ["ThresholdChoice", "ThresholdRule", "choose_box_thresholds", "rsna_at", "target_prevalence"]


def rsna_at(
    detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]], image_threshold: float,
    box_threshold: float, weights: Sequence[float] | None = None,
) -> float | None:
    """The RSNA score with the boxes kept at (image_threshold, box_threshold); boxes and truth in original pixels.

    ``weights``: per image, as :func:`~pneumonia.evaluation.box_metrics.rsna_score` takes them.
    """
    chosen = [d.kept(image_threshold, box_threshold) for d in detections]
    return rsna_score([b for b, _ in chosen], [s for _, s in chosen], truth, weights)


@dataclass(frozen=True)
class ThresholdChoice:
    image_threshold: float
    box_threshold: float
    rsna_score: float
    grid: list[dict]  # every candidate pair: {"image_threshold", "box_threshold", "rsna_score"}


def choose_box_thresholds(
    detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]], candidates: Sequence[float],
    prevalence: float | None = None, gate_sensitivity: float | None = None,
) -> ThresholdChoice:
    """The (image, box) threshold pair with the best RSNA score; ties go to the higher thresholds (fewer boxes).

    ``prevalence``: the score is val's reweighted to it (:func:`prevalence_weights`); None = val's own.
    ``gate_sensitivity``: the gate is the image-probability threshold reaching this sensitivity on val
    (:func:`~pneumonia.evaluation.operating_points.threshold_for_sensitivity`) and only the box threshold is chosen
    by the score; None = the gate too, among ``candidates`` and 0.
    """
    weights = prevalence_weights(truth, prevalence)
    if gate_sensitivity is None:
        gates = sorted({0.0, *candidates})
    else:
        labels = np.array([int(len(boxes) > 0) for boxes in truth])
        gates = [threshold_for_sensitivity(labels, np.array([d.image_probability for d in detections]),
                                           gate_sensitivity)]
    grid = [{"image_threshold": gate, **row} for gate in gates
            for row in box_threshold_sweep(lambda t, gate=gate: [d.kept(gate, t) for d in detections], truth,
                                           candidates, weights)]
    best = max(grid, key=lambda g: (g["rsna_score"], g["image_threshold"], g["box_threshold"]))
    return ThresholdChoice(best["image_threshold"], best["box_threshold"], best["rsna_score"], grid)


@dataclass(frozen=True)
class ThresholdRule:
    """How the detect stage chooses the detector's pair on val (the arguments of :func:`choose_box_thresholds`)."""

    candidates: tuple[float, ...]  # detect.score_thresholds
    prevalence: float | None = None  # detect.threshold_prevalence resolved (:func:`target_prevalence`)
    gate_sensitivity: float | None = None  # evaluate.target_sensitivity: the gate at that operating point

    def choose(self, detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]]) -> ThresholdChoice:
        return choose_box_thresholds(detections, truth, self.candidates, self.prevalence, self.gate_sensitivity)
