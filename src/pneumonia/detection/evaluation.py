"""The evaluate_detection stage: the detector scored as the RSNA challenge scores it, beside the CAM baseline.

Everything chosen was chosen on val (the epoch and the image/box thresholds, in the model file);
val numbers are therefore optimistic and the headline is the held-out test split. Per split:

- ``rsna_score`` at the chosen thresholds (:func:`pneumonia.localization.box_metrics.rsna_score`);
- ``ap50`` and ``ap50_95``: torchmetrics' ``MeanAveragePrecision`` (COCO's AP at IoU 0.5 and
  averaged over 0.5:0.95) of every decoded box ranked by its score, no threshold (AP sweeps them);
- ``recall_iou0p50`` and ``false_positives_per_image`` at the chosen thresholds;
- size agreement on true-positive images (truth and kept boxes): the union of the kept boxes and of
  the true boxes as a fraction of the image (Spearman, mean absolute error), and in mm² where the
  DICOM gave PixelSpacing;
- image-level AUROC with bootstrap 95 % intervals of the detector's image probability, of its
  "max box score", of the classifier, and of their mean (the ensemble).

Boxes are in pixels of the ORIGINAL image throughout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from pneumonia.atomic import atomic_dir, atomic_path, write_json
from pneumonia.bootstrap import auroc, bootstrap_ci
from pneumonia.checkpoint import LoadedModel
from pneumonia.detection.detector import ImageDetections, LoadedDetector, area_fraction, detect_images
from pneumonia.detection.thresholds import rsna_at
from pneumonia.errors import DatasetError
from pneumonia.inference import predict_probabilities
from pneumonia.localization.box_metrics import XYWH, iou_accuracy, size_agreement
from pneumonia.localization.cam import localize_images
from pneumonia.localization.cam_stage import localization_metrics
from pneumonia.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.overlay import OVERLAY_ROLES, draw_overlay, overlay_file
from pneumonia.params import EvaluateDetectionParams, LocalizeParams

SPLITS = ("val", "test")
IMAGE_SCORES = ("detector", "max_box_score", "classifier", "ensemble")


def average_precision(detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]]) -> dict[str, float]:
    """COCO AP at IoU 0.5 and over 0.5:0.95 (torchmetrics) of every decoded box, ranked by score."""
    metric = MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend="pycocotools")
    as_tensor = lambda boxes: torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))  # noqa: E731
    metric.update(
        [{"boxes": as_tensor(d.boxes), "scores": torch.as_tensor(d.scores, dtype=torch.float32),
          "labels": torch.zeros(len(d.scores), dtype=torch.int64)} for d in detections],
        [{"boxes": as_tensor(t), "labels": torch.zeros(len(t), dtype=torch.int64)} for t in truth],
    )
    result = metric.compute()
    return {"ap50": float(result["map_50"]), "ap50_95": float(result["map"])}


def box_metrics(
    detections: Sequence[ImageDetections], rows: Sequence[ManifestRow], image_threshold: float, box_threshold: float
) -> dict:
    """RSNA score, AP, recall and false positives at IoU 0.5, size agreement, for one split at the thresholds."""
    truth = [r.boxes for r in rows]
    kept = [d.kept(image_threshold, box_threshold)[0] for d in detections]
    at_half = iou_accuracy(kept, truth, thresholds=(0.5,))[0.5]
    positives = [i for i, (boxes, r) in enumerate(zip(kept, rows)) if len(boxes) and r.boxes]
    estimated = [area_fraction(kept[i], rows[i].rows, rows[i].columns) for i in positives]
    true = [area_fraction(rows[i].boxes, rows[i].rows, rows[i].columns) for i in positives]
    with_spacing = [k for k, i in enumerate(positives) if rows[i].pixel_spacing_mm is not None]
    mm2 = lambda k, values: values[k] * rows[positives[k]].rows * rows[positives[k]].columns * rows[positives[k]].pixel_spacing_mm ** 2  # noqa: E731
    size_mm2 = size_agreement([mm2(k, estimated) for k in with_spacing], [mm2(k, true) for k in with_spacing])
    return {
        "n": len(rows),
        "positive": int(sum(bool(r.boxes) for r in rows)),
        "gt_boxes": int(sum(len(r.boxes) for r in rows)),
        "predicted_boxes": int(sum(len(k) for k in kept)),
        "rsna_score": rsna_at(detections, truth, image_threshold, box_threshold),
        **average_precision(detections, truth),
        "recall_iou0p50": at_half.accuracy,
        "false_positives_per_image": at_half.false_positives_per_image,
        "size_true_positives": size_agreement(estimated, true),
        "size_true_positives_mm2": {
            "n": size_mm2["n"], "spearman": size_mm2["spearman"], "mean_absolute_error_mm2": size_mm2["mean_absolute_error"]
        },
    }


def image_scores(detections: Sequence[ImageDetections], classifier_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Each image score compared: the detector's image probability, its max box score, the classifier, their mean."""
    detector = np.array([d.image_probability for d in detections])
    return {
        "detector": detector,
        "max_box_score": np.array([d.max_box_score for d in detections]),
        "classifier": np.asarray(classifier_probs, np.float64),
        "ensemble": (detector + np.asarray(classifier_probs, np.float64)) / 2,
    }


def image_aurocs(labels: np.ndarray, scores: dict[str, np.ndarray], resamples: int, seed: int) -> dict:
    out = {}
    for name, values in scores.items():
        low, high, used = bootstrap_ci(labels, values, auroc, resamples=resamples, seed=seed)
        out[name] = {"auroc": auroc(labels, values), "ci95": {"low": low, "high": high, "resamples_used": used}}
    return out


def threshold_sweep(
    detections: Sequence[ImageDetections], rows: Sequence[ManifestRow], image_threshold: float, candidates: Sequence[float]
) -> list[dict]:
    """RSNA score and AP@0.5 of the kept boxes against the box threshold, at the chosen image gate (val)."""
    truth = [r.boxes for r in rows]
    sweep = []
    for t in sorted(candidates):
        kept = [d.kept(image_threshold, t) for d in detections]
        gated = [ImageDetections(b, s, d.image_probability, d.rows, d.columns) for (b, s), d in zip(kept, detections)]
        sweep.append({"box_threshold": t, "rsna_score": rsna_at(detections, truth, image_threshold, t) or 0.0,
                      "ap50": average_precision(gated, truth)["ap50"]})
    return sweep


def _split_data(processed_dir: Path, split: str) -> tuple[list[ManifestRow], np.ndarray]:
    rows = split_rows(read_manifest(processed_dir), split)
    if not rows:
        raise DatasetError(f"{processed_dir / 'manifest.csv'}: no images in split {split!r}; the detector is scored "
                           "on val and test: set split.test_size > 0 and rerun dicom_to_npy (dvc repro)")
    images = np.load(processed_dir / f"{split}.npy", mmap_mode="r")
    if len(images) != len(rows):
        raise DatasetError(f"{processed_dir / f'{split}.npy'} has {len(images)} images but the manifest lists "
                           f"{len(rows)}; rerun dicom_to_npy (dvc repro)")
    return rows, images


def run(
    processed_dir: Path,
    detector: LoadedDetector,
    classifier: LoadedModel,
    params: EvaluateDetectionParams,
    localize: LocalizeParams,
    candidates: Sequence[float],
    seed: int,
    metrics_json: Path = Path("metrics/detection.json"),
    report_json: Path = Path("reports/detection.json"),
    report_md: Path = Path("reports/detection.md"),
    plots_dir: Path = Path("plots/detection"),
    batch_size: int = 64,
) -> dict:
    """Score the detector on val and test beside the classifier and the CAM baseline; write every output.

    Returns the report (what ``report_json`` holds).
    """
    processed_dir = Path(processed_dir)
    image_threshold, box_threshold = detector.image_threshold, detector.box_threshold
    report: dict = {
        "headline_split": "test",
        "chosen_on_val": {"image_threshold": image_threshold, "box_threshold": box_threshold,
                          "nms_iou": detector.nms_iou, "max_boxes": detector.max_boxes},
    }
    kept: dict[str, tuple] = {}
    for split in SPLITS:
        rows, images = _split_data(processed_dir, split)
        labels = np.array([int(bool(r.boxes)) for r in rows])
        if len(np.unique(labels)) < 2:
            raise DatasetError(f"the {split} split has a single class: AUROC is undefined; use a larger split")
        sizes = [(r.rows, r.columns) for r in rows]
        detections = detect_images(detector, images, sizes, batch_size)
        classifier_probs = predict_probabilities(classifier, images, batch_size)
        scores = image_scores(detections, classifier_probs)
        cam_threshold = localize.threshold if localize.threshold is not None else classifier.threshold
        cams = localize_images(classifier, np.asarray(images), [(r.rows, r.columns, r.pixel_spacing_mm) for r in rows],
                               cam_threshold, localize.cam_threshold, localize.min_area, batch_size)
        report[split] = {
            "model_selected_on_this_split": split == "val",
            "detector": box_metrics(detections, rows, image_threshold, box_threshold),
            "image_auroc": image_aurocs(labels, scores, params.bootstrap_resamples, seed),
            "cam_baseline": localization_metrics(cams, [r.boxes for r in rows], sizes),
        }
        kept[split] = (rows, images, detections)
    val_auroc = {k: v["auroc"] for k, v in report["val"]["image_auroc"].items()}
    # Judged on val, like every choice: does the mean of the two probabilities rank images better than either?
    ensemble_helps = val_auroc["ensemble"] > max(val_auroc["detector"], val_auroc["classifier"])
    report["image_score"] = {
        "gate": "detector",
        "ensemble_helps_on_val": bool(ensemble_helps),
        "why": "the detector's own image probability gates its boxes: it travels in the detector's model file, "
               "the gate and the box threshold were chosen together with it on val, and predict needs no second "
               "model to place boxes; the classifier's calibrated probability stays the image-level answer",
    }
    val_rows, _, val_detections = kept["val"]
    sweep = threshold_sweep(val_detections, val_rows, image_threshold, candidates)
    report["val_threshold_sweep"] = sweep
    _write_plots(Path(plots_dir), sweep, kept["test"], image_threshold, box_threshold, params.overlays)
    write_json(metrics_json, headline(report))
    write_json(report_json, report)
    _write_markdown(Path(report_md), report, Path(plots_dir))
    return report


def headline(report: dict) -> dict:
    """What ``dvc metrics diff`` compares: the test split's RSNA score, AP, image AUROC and size agreement (3 decimals)."""
    test = report["test"]
    size = test["detector"]["size_true_positives"]
    values = {
        "rsna_score": test["detector"]["rsna_score"],
        "ap50": test["detector"]["ap50"],
        # AP@[0.5:0.95] is in the report; the headline keeps `dvc metrics show` near a screen's width
        "auroc": test["image_auroc"][report["image_score"]["gate"]]["auroc"],  # column shared with the classifier's
        "size_spearman": size["spearman"],
        "area_mae": size["mean_absolute_error"],  # fraction of the image
    }
    return {"split": "test"} | {k: None if v is None else round(float(v), 3) for k, v in values.items()}


def _size_points(rows: Sequence[ManifestRow], detections: Sequence[ImageDetections], image_threshold: float,
                 box_threshold: float) -> list[dict]:
    points = []
    for r, d in zip(rows, detections):
        boxes = d.kept(image_threshold, box_threshold)[0]
        if len(boxes) and r.boxes:
            points.append({"true_area_percent": 100 * area_fraction(r.boxes, r.rows, r.columns),
                           "predicted_area_percent": 100 * area_fraction(boxes, r.rows, r.columns)})
    return points


def _write_plots(plots_dir: Path, sweep: list[dict], test: tuple, image_threshold: float, box_threshold: float,
                 overlays: int) -> None:
    rows, images, detections = test
    write_json(plots_dir / "thresholds.json", sweep)
    write_json(plots_dir / "size.json", _size_points(rows, detections, image_threshold, box_threshold))
    roles: dict[str, list[tuple[float, int]]] = {role: [] for role in OVERLAY_ROLES}
    for i, (r, d) in enumerate(zip(rows, detections)):
        boxes, scores = d.kept(image_threshold, box_threshold)
        if len(boxes):
            roles["tp" if r.boxes else "fp"].append((-float(scores.max()), i))
        elif r.boxes:
            roles["fn"].append((-d.image_probability, i))
    size = images.shape[1]
    with atomic_dir(plots_dir / "overlays") as tmp:
        for role, ranked in roles.items():
            for rank, (_, i) in enumerate(sorted(ranked)[:overlays], start=1):
                r, d = rows[i], detections[i]
                sx, sy = size / r.columns, size / r.rows
                scale = lambda b: (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)  # noqa: E731 original -> array pixels
                boxes, scores = d.kept(image_threshold, box_threshold)
                draw_overlay(
                    np.asarray(images[i]), np.zeros((size, size), np.float32), [scale(b) for b in boxes],
                    [scale(b) for b in r.boxes], d.image_probability, tmp / overlay_file(role, rank),
                    title=f"{role.upper()} #{rank}" + (f"  box {scores.max():.2f}" if len(scores) else ""),
                )


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else scale * value


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _write_markdown(path: Path, report: dict, plots_dir: Path) -> None:
    """A short section for reports/report.md: the tables, and the overlays by relative link."""
    lines = ["## The detector (trained on the RSNA boxes) against the CAM baseline", ""]
    chosen = report["chosen_on_val"]
    lines.append(f"Chosen on val: image gate {chosen['image_threshold']}, box threshold {chosen['box_threshold']}, "
                 f"NMS IoU {chosen['nms_iou']}, at most {chosen['max_boxes']} boxes. Val chose them; test is the headline.")
    lines += ["", "| metric | detector val | detector test | CAM val | CAM test |", "|---|---|---|---|---|"]
    val, test = report["val"], report["test"]
    size = lambda block, key, scale=1: lambda s: _scaled(s[block]["size_true_positives"][key], scale)  # noqa: E731
    table = [  # (name, the detector's value of a split block, the CAM baseline's)
        ("RSNA score", lambda s: s["detector"]["rsna_score"], lambda s: s["cam_baseline"]["rsna_score"]),
        ("recall at IoU 0.5", lambda s: s["detector"]["recall_iou0p50"],
         lambda s: s["cam_baseline"]["iou_accuracy"]["t0p50"]),
        ("false-positive boxes per image (IoU 0.5)", lambda s: s["detector"]["false_positives_per_image"],
         lambda s: s["cam_baseline"]["iou_false_positives_per_image"]["t0p50"]),
        ("AP@0.5", lambda s: s["detector"]["ap50"], lambda s: None),
        ("AP@[0.5:0.95]", lambda s: s["detector"]["ap50_95"], lambda s: None),
        ("size Spearman (true positives)", size("detector", "spearman"), size("cam_baseline", "spearman")),
        ("area MAE, % of the image", size("detector", "mean_absolute_error", 100),
         size("cam_baseline", "mean_absolute_error", 100)),
    ]
    for name, detector, cam in table:
        lines.append(f"| {name} | {_fmt(detector(val))} | {_fmt(detector(test))} | {_fmt(cam(val))} | {_fmt(cam(test))} |")
    mm2 = test["detector"]["size_true_positives_mm2"]
    lines.append(f"| area MAE, mm² (test, n={mm2['n']}) | | {_fmt(mm2['mean_absolute_error_mm2'], 0)} | | |")
    lines += ["", "Image-level AUROC on test (bootstrap 95 % interval):", "", "| image score | AUROC | 95 % CI |",
              "|---|---|---|"]
    for name, value in test["image_auroc"].items():
        ci = value["ci95"]
        lines.append(f"| {name} | {_fmt(value['auroc'])} | {_fmt(ci['low'])}–{_fmt(ci['high'])} |")
    lines += ["", f"Boxes are gated by the {report['image_score']['gate']} image score: {report['image_score']['why']}.", ""]
    overlays = sorted((plots_dir / "overlays").glob("*.png"))
    relative = Path(os.path.relpath(plots_dir / "overlays", path.parent))  # links work from the report's folder
    for role, caption in (("tp", "true positives"), ("fp", "false positives"), ("fn", "misses")):
        found = [p for p in overlays if p.name.startswith(role + "_")]
        if found:
            lines.append(f"{caption}: " + " ".join(f"![{p.stem}]({relative / p.name})" for p in found))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
