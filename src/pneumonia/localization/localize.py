"""The localize stage: the CAM baseline on a split, its metrics JSON, boxes CSV and overlays."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from pneumonia.core.atomic import atomic_dir, atomic_path, write_json
from pneumonia.core.boxes import to_array_pixels
from pneumonia.classification.classifier import load_classifier
from pneumonia.core.errors import DatasetError
from pneumonia.classification.inference import default_device
from pneumonia.evaluation.box_metrics import (
    XYWH, iobb_accuracy, iou_accuracy, pointing_game, rsna_score, size_agreement, threshold_key, union_area,
)
from pneumonia.localization.cam import ImageLocalization, localize_images, upsample_map
from pneumonia.data.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.reporting.overlay import OVERLAY_ROLES, draw_overlay, overlay_file
from pneumonia.core.params import LocalizeParams


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
    (at the classification threshold), taken in turn, ``params.overlays`` in all,
    written as ``tp_01.png``, ``fp_01.png``, ``fn_01.png`` …; ``metrics["overlays"]``
    says which patient each one shows.
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
    report["overlays"] = write_overlays(overlays_dir, images, rows, results, params.overlays, seed)
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


def write_overlays(
    overlays_dir: Path,
    images: np.ndarray,
    rows: Sequence[ManifestRow],
    results: Sequence[ImageLocalization],
    count: int,
    seed: int,
) -> list[dict]:
    """Draw the sampled overlays as ``{role}_{rank:02d}.png``; return what each file shows.

    Named by role and rank, never by patient, so another run or experiment replaces
    the same files; the patient ID is in the image's caption (its first 8
    characters) and, whole, in the returned list (reports/localization.json).
    Within a role, rank 1 is the highest probability, as the detector ranks its own.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {role: [] for role in OVERLAY_ROLES}
    for i, (row, result) in enumerate(zip(rows, results)):
        if result.positive and row.label:
            groups["tp"].append(i)
        elif result.positive:
            groups["fp"].append(i)
        elif row.label:
            groups["fn"].append(i)
    queues = {role: list(rng.permutation(indices)) for role, indices in groups.items()}
    picked: dict[str, list[int]] = {role: [] for role in OVERLAY_ROLES}
    taken = 0
    while taken < count and any(queues.values()):
        for role, queue in queues.items():
            if queue and taken < count:
                picked[role].append(int(queue.pop(0)))
                taken += 1
    size = images.shape[1]
    shown = []
    with atomic_dir(overlays_dir) as tmp:
        for role, indices in picked.items():
            for rank, i in enumerate(sorted(indices, key=lambda i: -results[i].probability), start=1):
                row, result = rows[i], results[i]
                scale = lambda b: to_array_pixels(b, row.rows, row.columns, size)  # noqa: E731
                name = overlay_file(role, rank)
                draw_overlay(
                    np.asarray(images[i]),
                    upsample_map(result.cam, size, size, size, result.arch),
                    [scale(b.xywh) for b in result.boxes],
                    [scale(b) for b in row.boxes],
                    result.probability,
                    tmp / name,
                    title=f"{role.upper()} #{rank}  {row.patient_id[:8]}",
                )
                shown.append({"file": name, "role": role, "rank": rank, "patient_id": row.patient_id,
                              "probability": round(result.probability, 6)})
    return shown
