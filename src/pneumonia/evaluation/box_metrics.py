"""Boxes against the RSNA boxes: overlaps, accuracies, the RSNA challenge score, size agreement.

Coordinates: every box is ``(x, y, width, height)`` with the origin at the
top-left corner, x along columns and y down rows; predicted and ground-truth
boxes of one image must be in the same pixels (the ORIGINAL image's, 1024 x
1024 for RSNA, in this project's reports). Shared by the CAM baseline
(:mod:`pneumonia.localization.cam`) and the detector (:mod:`pneumonia.detection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torchvision.ops import box_convert, box_iou

XYWH = tuple[float, float, float, float]

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75)  # ChestX-ray8's
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
RSNA_IOU_THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)  # the challenge's


def _as_boxes(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def box_iou_xywh(predicted: Sequence[XYWH], truth: Sequence[XYWH]) -> np.ndarray:
    """Intersection over union, P x G, of (x, y, w, h) boxes (torchvision's box_iou)."""
    a, b = _as_boxes(predicted), _as_boxes(truth)
    return box_iou(box_convert(a, "xywh", "xyxy"), box_convert(b, "xywh", "xyxy")).numpy()


def box_iobb_xywh(predicted: Sequence[XYWH], truth: Sequence[XYWH]) -> np.ndarray:
    """Intersection over the PREDICTED box's area, P x G (ChestX-ray8's IoBB); 0 for an empty predicted box."""
    a, b = np.asarray(predicted, np.float64).reshape(-1, 4), np.asarray(truth, np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = (a[:, 2] * a[:, 3])[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def pointing_game(
    cam_max_points: Sequence[tuple[float, float]], gt_boxes_per_image: Sequence[Sequence[XYWH]]
) -> float | None:
    """The fraction of images with ground-truth boxes whose map maximum (x, y) lies inside one of them.

    Points and boxes in the same pixels (original); a point on a box's edge counts
    as inside. Images without boxes (negatives) are left out; None when no image has any.
    """
    hits = []
    for (px, py), boxes in zip(cam_max_points, gt_boxes_per_image):
        if len(boxes):
            hits.append(any(x <= px <= x + w and y <= py <= y + h for x, y, w, h in boxes))
    return float(np.mean(hits)) if hits else None


@dataclass(frozen=True)
class BoxAccuracy:
    """At one overlap threshold: the share of ground-truth boxes hit (None without any), false positives per image."""

    accuracy: float | None
    false_positives_per_image: float


def _overlap_accuracy(
    predicted_per_image: Sequence[Sequence[XYWH]],
    gt_boxes_per_image: Sequence[Sequence[XYWH]],
    thresholds: Sequence[float],
    overlap: Callable[[Sequence[XYWH], Sequence[XYWH]], np.ndarray],
) -> dict[float, BoxAccuracy]:
    gt_total, hit = 0, np.zeros(len(thresholds))
    false_positives = np.zeros(len(thresholds))
    t = np.asarray(thresholds)[:, None]
    for predicted, truth in zip(predicted_per_image, gt_boxes_per_image, strict=True):
        gt_total += len(truth)
        if not len(predicted):
            continue
        if not len(truth):
            false_positives += len(predicted)
            continue
        matrix = overlap(predicted, truth)  # P x G
        hit += (matrix.max(axis=0)[None, :] >= t).sum(axis=1)
        false_positives += (matrix.max(axis=1)[None, :] < t).sum(axis=1)
    images = max(len(gt_boxes_per_image), 1)
    return {
        float(threshold): BoxAccuracy(
            accuracy=float(hit[i] / gt_total) if gt_total else None,
            false_positives_per_image=float(false_positives[i] / images),
        )
        for i, threshold in enumerate(thresholds)
    }


def iobb_accuracy(
    predicted_per_image: Sequence[Sequence[XYWH]],
    gt_boxes_per_image: Sequence[Sequence[XYWH]],
    thresholds: Sequence[float] = IOBB_THRESHOLDS,
) -> dict[float, BoxAccuracy]:
    """ChestX-ray8's localization accuracy with IoBB (intersection over the predicted box's area).

    At each threshold T: the fraction of all ground-truth boxes with some predicted
    box of the same image at IoBB >= T, and the predicted boxes with IoBB < T to
    every ground-truth box of their image, per image (all images count, negatives too).
    A small box inside a large ground truth scores 1, however little of it it covers.
    """
    return _overlap_accuracy(predicted_per_image, gt_boxes_per_image, thresholds, box_iobb_xywh)


def iou_accuracy(
    predicted_per_image: Sequence[Sequence[XYWH]],
    gt_boxes_per_image: Sequence[Sequence[XYWH]],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[float, BoxAccuracy]:
    """As :func:`iobb_accuracy`, with intersection over union as the overlap."""
    return _overlap_accuracy(predicted_per_image, gt_boxes_per_image, thresholds, box_iou_xywh)


def rsna_image_score(
    predicted: Sequence[XYWH],
    confidences: Sequence[float],
    truth: Sequence[XYWH],
    thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS,
) -> float | None:
    """One image's RSNA challenge score: the mean over IoU thresholds t of TP / (TP + FP + FN).

    At each t, predictions in descending confidence each take the unmatched
    ground-truth box of highest IoU, if that IoU exceeds t (a TP); the rest are
    FPs, unmatched ground truth FNs. Without ground truth: 0 with any prediction,
    None (left out) with none.
    """
    if not len(truth):
        return 0.0 if len(predicted) else None
    if not len(predicted):
        return 0.0
    order = np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable")
    iou = box_iou_xywh(predicted, truth)[order]
    scores = []
    for t in thresholds:
        matched = np.zeros(len(truth), dtype=bool)
        tp = 0
        for row in iou:
            candidates = np.where(matched, -1.0, row)
            best = int(np.argmax(candidates))
            if candidates[best] > t:
                matched[best] = True
                tp += 1
        fp, fn = len(predicted) - tp, len(truth) - tp
        scores.append(tp / (tp + fp + fn))
    return float(np.mean(scores))


def rsna_score(
    predicted_per_image: Sequence[Sequence[XYWH]],
    confidences_per_image: Sequence[Sequence[float]],
    gt_boxes_per_image: Sequence[Sequence[XYWH]],
    weights: Sequence[float] | None = None,
) -> float | None:
    """The RSNA challenge metric: the mean of :func:`rsna_image_score` over the images it does not leave out.

    ``weights`` (one per image, >= 0) make it the weighted mean over those images, e.g.
    :func:`prevalence_weights`; None is the challenge's plain mean. None when no image counts.
    """
    scores = [
        rsna_image_score(p, c, g)
        for p, c, g in zip(predicted_per_image, confidences_per_image, gt_boxes_per_image, strict=True)
    ]
    return mean_image_score(scores, weights)


def box_threshold_sweep(
    kept_at: Callable[[float], Sequence[tuple[Sequence[XYWH], Sequence[float]]]], truth: Sequence[Sequence[XYWH]],
    candidates: Sequence[float], weights: Sequence[float] | None = None,
) -> list[dict]:
    """The RSNA score of the (boxes, scores) per image that ``kept_at(t)`` keeps, at each candidate ``t`` in
    increasing order: ``[{"box_threshold", "rsna_score"}]``, no score (no image counted) as 0."""
    sweep = []
    for t in sorted(candidates):
        kept = kept_at(t)
        score = rsna_score([b for b, _ in kept], [s for _, s in kept], truth, weights)
        sweep.append({"box_threshold": t, "rsna_score": 0.0 if score is None else score})
    return sweep


def mean_image_score(scores: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    """The mean of per-image scores over those not None (left out), weighted by ``weights`` when given."""
    if weights is None:
        kept = [s for s in scores if s is not None]
        return float(np.mean(kept)) if kept else None
    pairs = [(s, w) for s, w in zip(scores, weights, strict=True) if s is not None]
    total = sum(w for _, w in pairs)
    return float(sum(s * w for s, w in pairs) / total) if pairs and total > 0 else None


def target_prevalence(setting: float | str | None, train_rows: Sequence) -> float | None:
    """``detect.threshold_prevalence`` as a number: null = the train split's prevalence, "val" = None (val's own).

    ``train_rows``: the manifest rows of the train split (their ``label``: 1 = pneumonia).
    """
    if setting == "val":
        return None
    if setting is None:
        return sum(r.label for r in train_rows) / len(train_rows)
    return float(setting)


def prevalence_weights(gt_boxes_per_image: Sequence[Sequence[XYWH]], prevalence: float | None) -> np.ndarray | None:
    """Importance weights that make these images stand for a population with ``prevalence`` positives.

    A positive (an image with a true box) weighs p / p_here, a negative (1 - p) / (1 - p_here), so
    positives carry p of the total weight and negatives 1 - p; :func:`rsna_score` with them estimates the
    score on images drawn at prevalence p. None (unweighted) when ``prevalence`` is None or the images hold
    a single class, which no weighting can shift.
    """
    positive = np.array([len(g) > 0 for g in gt_boxes_per_image], dtype=bool)
    here = positive.mean() if len(positive) else 0.0
    if prevalence is None or here in (0.0, 1.0):
        return None
    return np.where(positive, prevalence / here, (1 - prevalence) / (1 - here))


def union_area(boxes: Sequence[XYWH]) -> float:
    """Exact area covered by the union of (x, y, w, h) boxes (overlaps counted once).

    Coordinate compression: the box edges cut the plane into cells, each either
    inside some box or not.
    """
    if not len(boxes):
        return 0.0
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    xs, ys = np.unique(np.concatenate([x0, x1])), np.unique(np.concatenate([y0, y1]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    covered = np.zeros((len(cy), len(cx)), dtype=bool)
    for i in range(len(b)):
        covered |= ((cy >= y0[i]) & (cy < y1[i]))[:, None] & ((cx >= x0[i]) & (cx < x1[i]))[None, :]
    return float((np.diff(ys)[:, None] * np.diff(xs)[None, :] * covered).sum())


def size_agreement(estimated: Sequence[float], truth: Sequence[float]) -> dict:
    """Spearman correlation and mean absolute error between estimated and true area fractions.

    The caller passes true-positive images only. Spearman is None with fewer than
    two images or when either side is constant; the error is None with none.
    """
    est, true = np.asarray(estimated, np.float64), np.asarray(truth, np.float64)
    spearman = None
    if len(est) >= 2 and np.ptp(est) > 0 and np.ptp(true) > 0:
        spearman = float(stats.spearmanr(est, true).statistic)
    return {
        "n": int(len(est)),
        "spearman": spearman,
        "mean_absolute_error": float(np.mean(np.abs(est - true))) if len(est) else None,
    }


def threshold_key(threshold: float) -> str:
    """A key without dots for metrics JSON: 0.1 -> t0p10."""
    return f"t{threshold:.2f}".replace(".", "p")

