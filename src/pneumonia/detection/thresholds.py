"""Which boxes an image keeps: an image-score gate and a box-score threshold, chosen together on val.

An image keeps its boxes with score >= ``box_threshold`` only when its image score (the detector's
image probability) is >= ``image_threshold`` (0 = no gate): the challenge's winners gated their
detectors with an image-level classifier in this way. The pair is chosen to maximise the RSNA
score on val over the candidates of ``detect.score_thresholds`` (plus 0 for the gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pneumonia.detection.detector import ImageDetections
from pneumonia.localization.box_metrics import XYWH, prevalence_weights, rsna_score, target_prevalence

__all__ = ["ThresholdChoice", "choose_thresholds", "rsna_at", "target_prevalence"]


def rsna_at(
    detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]], image_threshold: float,
    box_threshold: float, weights: Sequence[float] | None = None,
) -> float | None:
    """The RSNA score with the boxes kept at (image_threshold, box_threshold); boxes and truth in original pixels.

    ``weights``: per image, as :func:`~pneumonia.localization.box_metrics.rsna_score` takes them.
    """
    chosen = [d.kept(image_threshold, box_threshold) for d in detections]
    return rsna_score([b for b, _ in chosen], [s for _, s in chosen], truth, weights)


@dataclass(frozen=True)
class ThresholdChoice:
    image_threshold: float
    box_threshold: float
    rsna_score: float
    grid: list[dict]  # every candidate pair: {"image_threshold", "box_threshold", "rsna_score"}


def choose_thresholds(
    detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]], candidates: Sequence[float],
    prevalence: float | None = None,
) -> ThresholdChoice:
    """The (image, box) threshold pair with the best RSNA score; ties go to the higher thresholds (fewer boxes).

    ``prevalence``: the score is val's reweighted to it (:func:`prevalence_weights`); None = val's own.
    """
    weights = prevalence_weights(truth, prevalence)
    grid = []
    for image_threshold in sorted({0.0, *candidates}):
        for box_threshold in sorted(candidates):
            score = rsna_at(detections, truth, image_threshold, box_threshold, weights)
            grid.append({"image_threshold": image_threshold, "box_threshold": box_threshold,
                         "rsna_score": 0.0 if score is None else score})
    best = max(grid, key=lambda g: (g["rsna_score"], g["image_threshold"], g["box_threshold"]))
    return ThresholdChoice(best["image_threshold"], best["box_threshold"], best["rsna_score"], grid)
