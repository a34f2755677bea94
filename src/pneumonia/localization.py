"""Where and how large: class activation maps turned into boxes, and their scores against the RSNA boxes.

Coordinates: every box is ``(x, y, width, height)`` with the origin at the
top-left corner, x along columns and y down rows. Boxes of a map are in that
map's pixels; boxes of an image (predicted or ground truth) are in pixels of
the ORIGINAL image (``rows`` x ``columns`` of its DICOM, 1024 x 1024 for
RSNA), like the RSNA labels. A pixel ``(row, col)`` covers ``[col, col + 1)`` x
``[row, row + 1)``, so a region spanning columns 3..5 has x = 3, width = 3.

The map of an image (Zhou et al. 2016, as ChestX-ray8 used it): the feature maps
``F_k`` of ResNet18's last block (``layer4``, ``S/32`` x ``S/32`` for an
``S`` x ``S`` input) weighted by the single logit's fc weights,
``ReLU(sum_k w_k F_k)``, in the logit's units. It is upsampled bilinearly to the
original size, each cell placed where its receptive field peaks (see
:func:`cell_centres`); regions are where it reaches ``cam_threshold`` times its maximum.

Box confidence = image probability x region strength, where strength is the
region's mean map value over the map's maximum (in (cam_threshold, 1]): boxes
of a confident image on the map's hot spot rank first, which is what the RSNA
metric's descending-confidence matching rewards.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn
from torchvision.ops import box_convert, box_iou

from pneumonia.atomic import atomic_dir, atomic_path, write_json
from pneumonia.checkpoint import LoadedModel, load_classifier
from pneumonia.errors import DatasetError
from pneumonia.inference import default_device
from pneumonia.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.overlay import draw_overlay
from pneumonia.params import LocalizeParams

XYWH = tuple[float, float, float, float]

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75)  # ChestX-ray8's
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
LAYER4_STRIDE = 32  # input pixels per cell of ResNet18's last block
RSNA_IOU_THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)  # the challenge's


@dataclass(frozen=True)
class Region:
    """A connected region of a map above the threshold.

    ``box`` in the map's pixels; ``area_fraction`` = the region's pixels / all the
    map's pixels; ``strength`` = the region's mean map value / the map's maximum.
    """

    box: tuple[int, int, int, int]
    area_fraction: float
    strength: float


@dataclass(frozen=True)
class PredictedBox:
    """A box in ORIGINAL pixels with its confidence (probability x strength) and its region's area fraction."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    area_fraction: float

    @property
    def xywh(self) -> XYWH:
        return (self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class ImageLocalization:
    """What the model says about one image.

    ``cam``: the low-resolution map (h x w, float32, >= 0, logit units);
    ``peak``: (x, y) in original pixels of the map's maximum (the centre of its
    hottest cell, where the bilinear upsampling also peaks), taken before the
    ReLU so that it is defined when the map is zero everywhere; ``boxes``: empty when
    ``probability`` is below the classification threshold; ``area_fraction``:
    the thresholded area of the kept regions over the image area (0 without
    boxes); ``area_mm2``: the same in mm², None without PixelSpacing.
    """

    probability: float
    positive: bool
    cam: np.ndarray
    peak: tuple[float, float]
    boxes: tuple[PredictedBox, ...]
    area_fraction: float
    area_mm2: float | None


# --------------------------------------------------------------------------- maps and regions


@torch.inference_mode()
def class_activation_maps(
    network: nn.Module, images: torch.Tensor, temperature: float = 1.0, relu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (N,) and class activation maps (N, h, w) for standardized images (N, 1, S, S).

    One forward pass; a hook keeps ``layer4``'s output. Probability =
    sigmoid(logit / ``temperature``) (pass the checkpoint's). The map is
    ``ReLU(sum_k w_k F_k)``; ``relu=False`` returns the signed evidence before the
    ReLU (its mean plus the fc bias is the logit). The fc bias shifts the logit,
    not where it comes from, so it is left out of the map. Both float32.
    """
    captured: list[torch.Tensor] = []
    handle = network.layer4.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = network(images)
    finally:
        handle.remove()
    features = captured[0].float()
    weights = network.fc.weight[0].float()
    maps = torch.einsum("k,nkhw->nhw", weights, features)
    return (logits[:, 0].float() / temperature).sigmoid(), torch.relu(maps) if relu else maps


def cell_centres(cells: int, input_size: int, original_size: int) -> np.ndarray:
    """Where the map's cells along one axis are centred, in pixels of the original image (pixel k covers [k, k+1)).

    Every stride-2 layer of ResNet18 (conv1 7x7 pad 3, maxpool 3x3 pad 1, the 3x3
    pad 1 and 1x1 pad 0 convolutions opening layers 2-4) puts its output o on
    input pixel 2o, so ``layer4``'s cell j sits on input pixel 32j, centre 32j + 0.5
    (the peak of its receptive field), not 32j + 16, the middle of the 32-pixel
    block that a plain resize assumes. Ignoring that shifts the map by half a cell
    (an eighth of the image for a 4 x 4 map) to the right and down.
    """
    return (LAYER4_STRIDE * np.arange(cells) + 0.5) * original_size / input_size


def _interpolation_matrix(cells: int, input_size: int, size: int) -> np.ndarray:
    """``size`` x ``cells`` weights of linear interpolation between the cell centres, flat beyond the outer ones."""
    centres = cell_centres(cells, input_size, size)
    pixels = np.arange(size) + 0.5
    return np.stack([np.interp(pixels, centres, np.eye(cells)[j]) for j in range(cells)], axis=1)


def upsample_map(cam: np.ndarray | torch.Tensor, rows: int, columns: int, input_size: int) -> np.ndarray:
    """Bilinear upsampling of an h x w map of an ``input_size`` x ``input_size`` input to ``rows`` x ``columns``.

    The map's values sit at the cell centres of :func:`cell_centres`; in between
    they are interpolated linearly along each axis, beyond the outer centres held
    constant (float32). torch's ``interpolate`` cannot place the samples there,
    hence the two small interpolation matrices.
    """
    cam = np.asarray(cam, dtype=np.float64)
    h, w = cam.shape
    out = _interpolation_matrix(h, input_size, rows) @ cam @ _interpolation_matrix(w, input_size, columns).T
    return out.astype(np.float32)


def map_peak(evidence: np.ndarray, rows: int, columns: int, input_size: int) -> tuple[float, float]:
    """(x, y) in pixels of a ``rows`` x ``columns`` image: the centre of the map's hottest cell.

    The bilinear upsampling of :func:`upsample_map` peaks there too.
    """
    row, col = np.unravel_index(int(np.argmax(evidence)), evidence.shape)
    h, w = evidence.shape
    return float(cell_centres(w, input_size, columns)[col]), float(cell_centres(h, input_size, rows)[row])


def regions_from_map(cam: np.ndarray, cam_threshold: float, min_area: float) -> list[Region]:
    """Connected regions (8-connectivity) where ``cam >= cam_threshold * cam.max()``, largest first.

    Regions covering less than ``min_area`` of the map are dropped; a map that is
    zero everywhere has no regions.
    """
    cam = np.asarray(cam, dtype=np.float32)
    peak = float(cam.max(initial=0.0))
    if peak <= 0:
        return []
    labels, count = ndimage.label(cam >= cam_threshold * peak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    means = ndimage.mean(cam, labels, np.arange(1, count + 1))
    regions = []
    for slices, size, mean in zip(ndimage.find_objects(labels), sizes, means):
        fraction = float(size) / cam.size
        if fraction < min_area:
            continue
        rows, cols = slices
        box = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        regions.append(Region(box=box, area_fraction=fraction, strength=float(mean) / peak))
    return sorted(regions, key=lambda r: -r.area_fraction)


def localize_map(
    evidence: np.ndarray,
    probability: float,
    threshold: float,
    input_size: int,
    rows: int,
    columns: int,
    pixel_spacing_mm: float | None,
    cam_threshold: float,
    min_area: float,
) -> ImageLocalization:
    """Boxes, size and peak of one image from its low-resolution map (see :class:`ImageLocalization`).

    ``evidence``: the map before the ReLU (``class_activation_maps(..., relu=False)``)
    of an ``input_size`` x ``input_size`` model input, rows x columns originally;
    an already rectified map gives the same result. The peak is taken before the
    ReLU, so an image with no positive evidence anywhere (a zero map, common for
    confident negatives) still points at its strongest evidence rather than at
    an arbitrary first pixel.
    """
    evidence = np.asarray(evidence, dtype=np.float32)
    cam = np.maximum(evidence, 0)
    positive = probability >= threshold
    boxes: tuple[PredictedBox, ...] = ()
    if positive:
        regions = regions_from_map(upsample_map(cam, rows, columns, input_size), cam_threshold, min_area)
        boxes = tuple(
            PredictedBox(*map(float, r.box), confidence=probability * r.strength, area_fraction=r.area_fraction)
            for r in regions
        )
    area_fraction = float(sum(b.area_fraction for b in boxes))
    area_mm2 = None if pixel_spacing_mm is None else area_fraction * rows * columns * pixel_spacing_mm**2
    return ImageLocalization(
        probability=float(probability),
        positive=bool(positive),
        cam=cam,
        peak=map_peak(evidence, rows, columns, input_size),
        boxes=boxes,
        area_fraction=area_fraction,
        area_mm2=area_mm2,
    )


def standardize(model: LoadedModel, images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, S, S) -> the model's input (N, 1, S, S) on its device: (value/255 - mean)/std."""
    device = next(model.network.parameters()).device
    batch = torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device)
    return (batch.unsqueeze(1) / 255.0 - model.mean) / model.std


def localize_images(
    model: LoadedModel,
    images: np.ndarray,
    sizes: Sequence[tuple[int, int, float | None]],
    threshold: float,
    cam_threshold: float,
    min_area: float,
    batch_size: int,
) -> list[ImageLocalization]:
    """Localize ``N x S x S`` uint8 images; ``sizes[i]`` = (rows, columns, pixel spacing mm or None) of the original."""
    if images.shape[1:] != (model.image_size, model.image_size):
        raise DatasetError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model was trained on "
            f"{model.image_size}x{model.image_size}; rerun dicom_to_npy and train together (dvc repro)"
        )
    results = []
    for start in range(0, len(images), batch_size):
        batch = standardize(model, images[start : start + batch_size])
        probs, maps = class_activation_maps(model.network, batch, model.temperature, relu=False)
        for prob, evidence, (rows, columns, spacing) in zip(
            probs.cpu().numpy(), maps.cpu().numpy(), sizes[start : start + batch_size]
        ):
            results.append(
                localize_map(
                    evidence, float(prob), threshold, model.image_size, rows, columns, spacing, cam_threshold, min_area
                )
            )
    return results


# --------------------------------------------------------------------------- metrics


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
) -> float | None:
    """The RSNA challenge metric: the mean of :func:`rsna_image_score` over the images it does not leave out."""
    scores = [
        rsna_image_score(p, c, g)
        for p, c, g in zip(predicted_per_image, confidences_per_image, gt_boxes_per_image, strict=True)
    ]
    kept = [s for s in scores if s is not None]
    return float(np.mean(kept)) if kept else None


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


def localization_metrics(
    results: Sequence[ImageLocalization],
    gt_boxes_per_image: Sequence[Sequence[XYWH]],
    sizes: Sequence[tuple[int, int]],
) -> dict:
    """Every localization metric over a split; ``sizes[i]`` = (rows, columns) of image i's original."""
    predicted = [[b.xywh for b in r.boxes] for r in results]
    confidences = [[b.confidence for b in r.boxes] for r in results]
    labels = [len(g) > 0 for g in gt_boxes_per_image]
    iobb = iobb_accuracy(predicted, gt_boxes_per_image)
    iou = iou_accuracy(predicted, gt_boxes_per_image)
    true_positives = [i for i, r in enumerate(results) if r.positive and labels[i]]
    return {
        "n": len(results),
        "positive": int(sum(labels)),
        "predicted_positive": int(sum(r.positive for r in results)),
        "gt_boxes": int(sum(len(g) for g in gt_boxes_per_image)),
        "predicted_boxes": int(sum(len(p) for p in predicted)),
        "pointing_game": pointing_game([r.peak for r in results], gt_boxes_per_image),
        "iobb_accuracy": {threshold_key(t): a.accuracy for t, a in iobb.items()},
        "iobb_false_positives_per_image": {threshold_key(t): a.false_positives_per_image for t, a in iobb.items()},
        "iou_accuracy": {threshold_key(t): a.accuracy for t, a in iou.items()},
        "iou_false_positives_per_image": {threshold_key(t): a.false_positives_per_image for t, a in iou.items()},
        "rsna_score": rsna_score(predicted, confidences, gt_boxes_per_image),
        "size_true_positives": size_agreement(
            [results[i].area_fraction for i in true_positives],
            [union_area(gt_boxes_per_image[i]) / (sizes[i][0] * sizes[i][1]) for i in true_positives],
        ),
    }


# --------------------------------------------------------------------------- the localize stage


def run(
    processed_dir: Path,
    model_path: Path,
    params: LocalizeParams,
    out_json: Path = Path("reports/localization.json"),
    headline_json: Path | None = None,
    overlays_dir: Path = Path("plots/localization"),
    boxes_csv: Path = Path("data/localization/boxes.csv"),
    split: str = "val",
    seed: int = 0,
) -> dict:
    """Localize every image of ``split``; write the report, the headline, the boxes CSV and overlay PNGs.

    Returns ``{split: metrics}`` (what ``out_json`` holds). The overlays are a
    ``seed``-fixed sample of true positives, false positives and false negatives
    (at the classification threshold), taken in turn, ``params.overlays`` in all.
    """
    processed_dir = Path(processed_dir)
    model = load_classifier(model_path, default_device())
    rows = split_rows(read_manifest(processed_dir), split)
    if not rows:
        raise DatasetError(
            f"{processed_dir / 'manifest.csv'}: no images in split {split!r}; "
            "check split params and rerun dicom_to_npy (dvc repro)"
        )
    images = np.load(processed_dir / f"{split}.npy", mmap_mode="r")
    if len(images) != len(rows):
        raise DatasetError(
            f"{processed_dir / f'{split}.npy'} has {len(images)} images but the manifest lists {len(rows)}; "
            "rerun dicom_to_npy (dvc repro)"
        )
    threshold = params.threshold if params.threshold is not None else model.threshold
    results = localize_images(
        model, images, [(r.rows, r.columns, r.pixel_spacing_mm) for r in rows],
        threshold, params.cam_threshold, params.min_area, params.batch_size,
    )
    gt = [r.boxes for r in rows]
    report = {
        # The checkpoint (and its threshold) were chosen on val: val numbers are optimistic.
        "model_selected_on_this_split": split == "val",
        "threshold": threshold,
        "cam_threshold": params.cam_threshold,
        "min_area": params.min_area,
        **localization_metrics(results, gt, [(r.rows, r.columns) for r in rows]),
    }
    write_boxes_csv(boxes_csv, rows, results)
    _write_overlays(overlays_dir, images, rows, results, params.overlays, seed)
    result = {split: report}
    write_json(out_json, result)
    if headline_json is not None:
        write_json(headline_json, headline(result))
    return result


def headline(result: dict) -> dict:
    """The CAM baseline's headline: the RSNA score and size agreement, keys shared with the detector's."""
    (split, report), = result.items()
    size = report["size_true_positives"]
    values = {"rsna_score": report["rsna_score"], "size_spearman": size["spearman"]}
    return {"split": split} | {k: None if v is None else round(float(v), 3) for k, v in values.items()}


BOXES_COLUMNS = [
    "patient_id", "label", "probability", "predicted",
    "x", "y", "width", "height", "confidence", "area_fraction", "area_mm2",
]


def write_boxes_csv(path: Path, rows: Sequence[ManifestRow], results: Sequence[ImageLocalization]) -> None:
    """One line per predicted box (original pixels), and one with empty box fields for an image without any.

    ``area_fraction`` and ``area_mm2`` are the box's region's, so an image's boxes
    sum to its estimated size; ``area_mm2`` is empty without PixelSpacing.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BOXES_COLUMNS)
        for row, result in zip(rows, results, strict=True):
            head = [row.patient_id, row.label, f"{result.probability:.6f}", int(result.positive)]
            for box in result.boxes:
                spacing = row.pixel_spacing_mm
                mm2 = "" if spacing is None else f"{box.area_fraction * row.rows * row.columns * spacing**2:.1f}"
                coordinates = [f"{v:g}" for v in box.xywh]
                writer.writerow(head + coordinates + [f"{box.confidence:.6f}", f"{box.area_fraction:.6f}", mm2])
            if not result.boxes:
                writer.writerow(head + [""] * 7)


def _write_overlays(
    overlays_dir: Path,
    images: np.ndarray,
    rows: Sequence[ManifestRow],
    results: Sequence[ImageLocalization],
    count: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    groups = {"tp": [], "fp": [], "fn": []}
    for i, (row, result) in enumerate(zip(rows, results)):
        if result.positive and row.label:
            groups["tp"].append(i)
        elif result.positive:
            groups["fp"].append(i)
        elif row.label:
            groups["fn"].append(i)
    queues = {kind: list(rng.permutation(indices)) for kind, indices in groups.items()}
    picked: list[tuple[str, int]] = []
    while len(picked) < count and any(queues.values()):
        for kind, queue in queues.items():
            if queue and len(picked) < count:
                picked.append((kind, int(queue.pop(0))))
    size = images.shape[1]
    with atomic_dir(overlays_dir) as tmp:
        for kind, i in picked:
            row, result = rows[i], results[i]
            sx, sy = size / row.columns, size / row.rows
            scale = lambda b: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)  # noqa: E731 original -> array pixels
            draw_overlay(
                np.asarray(images[i]),
                upsample_map(result.cam, size, size, size),
                [scale(b.xywh) for b in result.boxes],
                [scale(b) for b in row.boxes],
                result.probability,
                tmp / f"{kind}_{row.patient_id}.png",
                title=f"{kind.upper()} {row.patient_id[:8]}",
            )
