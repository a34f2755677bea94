"""The evaluate_detection stage: the boxes predict gives, scored as the RSNA challenge scores them, beside the CAM baseline.

The boxes are the predictor's (:mod:`pneumonia.prediction.predictor`): the detector's boxes scoring at least the
box threshold, on images whose image-level decision is positive, and none elsewhere. Everything
chosen was chosen on val (the detector's epoch, the decision and its threshold, the box threshold);
val numbers are therefore optimistic and the headline is the held-out test split. Without a test
split (``split.test_size: 0``, as the reference recipe has it) val is scored alone and is the
headline, marked ``model_selected_on_this_split`` as the evaluate stage marks it. Per split:

- ``rsna_score`` of those boxes (:func:`pneumonia.evaluation.box_metrics.rsna_score`);
- ``ap50`` and ``ap50_95``: torchmetrics' ``MeanAveragePrecision`` (COCO's AP at IoU 0.5 and
  averaged over 0.5:0.95) of every decoded box ranked by its score, no threshold (AP sweeps them);
- ``recall_iou0p50`` and ``false_positives_per_image`` of the kept boxes;
- size agreement on true-positive images (truth and kept boxes): the union of the kept boxes and of
  the true boxes as a fraction of the image (Spearman, mean absolute error), and in mm² where the
  DICOM gave PixelSpacing;
- image-level AUROC with bootstrap 95 % intervals of the decision (the headline), of the detector's
  image probability, of its "max box score" and of the classifier.

Boxes are in pixels of the ORIGINAL image throughout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert, box_iou

from pneumonia.core.atomic import atomic_dir, atomic_path, write_json
from pneumonia.core.boxes import to_array_pixels
from pneumonia.evaluation.bootstrap import auroc, bootstrap_ci, percentile_interval, resample_indices
from pneumonia.detection.detector import ImageDetections, area_fraction
from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.box_metrics import XYWH, iou_accuracy, rsna_image_score, rsna_score, size_agreement
from pneumonia.localization.cam import localize_images
from pneumonia.localization.localize import localization_metrics
from pneumonia.data.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.reporting.overlay import OVERLAY_ROLES, draw_overlay, overlay_file
from pneumonia.core.params import EvaluateDetectionParams, LocalizeParams
from pneumonia.prediction.predictor import SYNTHETIC_NOTE, Predictor, boxes_under, classifier_probability, raw_outputs

SPLITS = ("val", "test")
Kept = list[tuple[np.ndarray, np.ndarray]]  # per image: the boxes predict gives and their scores


def box_average_precision(detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]]) -> dict[str, float]:
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


def rsna_of(kept: Kept, truth: Sequence[Sequence[XYWH]]) -> float | None:
    return rsna_score([b for b, _ in kept], [c for _, c in kept], truth)


def rsna_interval(kept: Kept, truth: Sequence[Sequence[XYWH]], resamples: int, seed: int) -> dict:
    """Bootstrap 95 % interval of the RSNA score, images resampled with replacement (the same draws as the
    AUROC intervals); an image the score leaves out (no truth, no box) stays out of every resample's mean."""
    per_image = np.array([np.nan if v is None else v for v in
                          (rsna_image_score(b, c, t) for (b, c), t in zip(kept, truth))], np.float64)
    index = resample_indices(len(per_image), resamples, seed)
    counted = ~np.isnan(per_image[index])
    means = np.where(counted.any(axis=1), np.nansum(per_image[index], axis=1) / np.maximum(counted.sum(axis=1), 1),
                     np.nan)
    return percentile_interval(means)._asdict()


def _coco_matches(detections: ImageDetections, truth: Sequence[XYWH], max_detections: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """One image's boxes matched to its true boxes at IoU 0.5 as pycocotools matches them: boxes in score order
    (the first ``max_detections``), each taking the unmatched true box it overlaps most (IoU >= 0.5; a tie goes
    to the later true box). Returns (scores, true-positive flags)."""
    order = np.argsort(-np.asarray(detections.scores, np.float64), kind="mergesort")[:max_detections]
    scores = np.asarray(detections.scores, np.float64)[order]
    hit = np.zeros(len(order), bool)
    if len(order) and len(truth):
        as_xyxy = lambda b: box_convert(torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4)), "xywh", "xyxy")  # noqa: E731
        iou = box_iou(as_xyxy(detections.boxes)[order], as_xyxy(truth)).numpy()
        taken = np.zeros(len(truth), bool)
        for d in range(len(order)):
            best, found = min(0.5, 1 - 1e-10), -1
            for g in range(len(truth)):
                if not taken[g] and iou[d, g] >= best:
                    best, found = iou[d, g], g
            if found >= 0:
                taken[found], hit[d] = True, True
    return scores, hit


def ap50_interval(detections: Sequence[ImageDetections], truth: Sequence[Sequence[XYWH]], resamples: int, seed: int) -> dict:
    """Bootstrap 95 % interval of AP@0.5, images resampled with replacement (the same draws as the RSNA score's).

    Matching is per image, so it is done once (:func:`_coco_matches`) and each resample only re-ranks the
    drawn images' boxes; the AP is COCO's 101-point interpolated precision, as torchmetrics' ``map_50`` computes it
    (tests check the full set against :func:`box_average_precision`). By hand because re-running torchmetrics for each
    of 1,000 resamples would cost minutes.
    """
    matched = [_coco_matches(d, t) for d, t in zip(detections, truth)]
    values = np.array([_ap_at(matched, [len(t) for t in truth], drawn)
                       for drawn in resample_indices(len(matched), resamples, seed)])
    return percentile_interval(values)._asdict()


def _ap_at(matched: Sequence[tuple[np.ndarray, np.ndarray]], true_counts: Sequence[int], drawn: np.ndarray) -> float:
    """COCO's AP@0.5 of the images ``drawn`` (indices, repeats allowed); NaN when they hold no true box."""
    positives = sum(true_counts[i] for i in drawn)
    if positives == 0:
        return float("nan")
    scores = np.concatenate([matched[i][0] for i in drawn])
    hits = np.concatenate([matched[i][1] for i in drawn])
    order = np.argsort(-scores, kind="mergesort")
    true_positives, false_positives = np.cumsum(hits[order]), np.cumsum(~hits[order])
    recall = true_positives / positives
    precision = np.maximum.accumulate((true_positives / np.maximum(true_positives + false_positives, 1))[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean())


def box_metrics(detections: Sequence[ImageDetections], kept: Kept, rows: Sequence[ManifestRow]) -> dict:
    """RSNA score, AP, recall and false positives at IoU 0.5, size agreement, for one split's kept boxes."""
    truth = [r.boxes for r in rows]
    boxes = [b for b, _ in kept]
    at_half = iou_accuracy(boxes, truth, thresholds=(0.5,))[0.5]
    positives = [i for i, (found, r) in enumerate(zip(boxes, rows)) if len(found) and r.boxes]
    estimated = [area_fraction(boxes[i], rows[i].rows, rows[i].columns) for i in positives]
    true = [area_fraction(rows[i].boxes, rows[i].rows, rows[i].columns) for i in positives]
    with_spacing = [k for k, i in enumerate(positives) if rows[i].pixel_spacing_mm is not None]
    mm2 = lambda k, values: values[k] * rows[positives[k]].rows * rows[positives[k]].columns * rows[positives[k]].pixel_spacing_mm ** 2  # noqa: E731
    size_mm2 = size_agreement([mm2(k, estimated) for k in with_spacing], [mm2(k, true) for k in with_spacing])
    return {
        "n": len(rows),
        "positive": int(sum(bool(r.boxes) for r in rows)),
        "gt_boxes": int(sum(len(r.boxes) for r in rows)),
        "predicted_boxes": int(sum(len(b) for b in boxes)),
        "rsna_score": rsna_of(kept, truth),
        **box_average_precision(detections, truth),
        "recall_iou0p50": at_half.accuracy,
        "false_positives_per_image": at_half.false_positives_per_image,
        "size_true_positives": size_agreement(estimated, true),
        "size_true_positives_mm2": {
            "n": size_mm2["n"], "spearman": size_mm2["spearman"], "mean_absolute_error_mm2": size_mm2["mean_absolute_error"]
        },
    }


def image_aurocs(labels: np.ndarray, scores: dict[str, np.ndarray], resamples: int, seed: int) -> dict:
    out = {}
    for name, values in scores.items():
        low, high, used = bootstrap_ci(labels, values, auroc, resamples=resamples, seed=seed)
        out[name] = {"auroc": auroc(labels, values), "ci95": {"low": low, "high": high, "resamples_used": used}}
    return out


def threshold_sweep(
    detections: Sequence[ImageDetections], rows: Sequence[ManifestRow], positive: np.ndarray, candidates: Sequence[float]
) -> list[dict]:
    """RSNA score and AP@0.5 of the kept boxes against the box threshold, under the decision (val)."""
    truth = [r.boxes for r in rows]
    sweep = []
    for t in sorted(candidates):
        kept = boxes_under(detections, positive, t)
        gated = [ImageDetections(b, s, d.image_probability, d.rows, d.columns) for (b, s), d in zip(kept, detections)]
        sweep.append({"box_threshold": t, "rsna_score": rsna_of(kept, truth) or 0.0,
                      "ap50": box_average_precision(gated, truth)["ap50"]})
    return sweep


def scored_splits(processed_dir: Path) -> list[str]:
    """The splits the detector is scored on: val, and test when there is one (the last is the headline)."""
    manifest = read_manifest(processed_dir)
    if not split_rows(manifest, "val"):
        raise DatasetError(f"{processed_dir / 'manifest.csv'}: no images in split 'val'; val chose the detector's "
                           "thresholds and is always scored: set split.train_size below the patient count and rerun "
                           "dicom_to_npy (dvc repro)")
    return [s for s in SPLITS if split_rows(manifest, s)]


def _split_data(processed_dir: Path, split: str) -> tuple[list[ManifestRow], np.ndarray]:
    rows = split_rows(read_manifest(processed_dir), split)
    images = np.load(processed_dir / f"{split}.npy", mmap_mode="r")
    if len(images) != len(rows):
        raise DatasetError(f"{processed_dir / f'{split}.npy'} has {len(images)} images but the manifest lists "
                           f"{len(rows)}; rerun dicom_to_npy (dvc repro)")
    return rows, images


def run(
    processed_dir: Path,
    predictor: Predictor,
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
    """Score the predictor's boxes on val and test (or val alone) beside the CAM baseline; write every output.

    Returns the report (what ``report_json`` holds).
    """
    processed_dir = Path(processed_dir)
    detector, decision = predictor.detector, predictor.decision
    splits = scored_splits(processed_dir)
    report: dict = {
        "headline_split": splits[-1],
        "synthetic": predictor.synthetic,
        "note": SYNTHETIC_NOTE if predictor.synthetic else "",
        "chosen_on_val": {"decision": decision.source, "decision_threshold": decision.threshold,
                          "box_threshold": predictor.box_threshold, "nms_iou": detector.nms_iou,
                          "max_boxes": detector.max_boxes,
                          "detector_alone": {"image_threshold": detector.image_threshold,
                                             "box_threshold": detector.box_threshold}},
    }
    kept_by_split: dict[str, tuple] = {}
    for split in splits:
        report[split], kept_by_split[split] = _score_split(processed_dir, split, predictor, params, localize, seed,
                                                           batch_size)
    report["image_score"] = {
        "gate": "decision",
        "why": "boxes belong to images whose image-level decision (the calibrated probability predict prints) "
               "is positive, so the label and the boxes never disagree",
    }
    val_rows, _, val_detections, _, val_positive, _ = kept_by_split["val"]
    sweep = threshold_sweep(val_detections, val_rows, val_positive, candidates)
    report["val_threshold_sweep"] = sweep
    _write_plots(Path(plots_dir), sweep, kept_by_split[report["headline_split"]], params.overlays, predictor.synthetic)
    write_json(metrics_json, headline(report))
    write_json(report_json, report)
    _write_markdown(Path(report_md), report, Path(plots_dir))
    return report


def _score_split(
    processed_dir: Path, split: str, predictor: Predictor, params: EvaluateDetectionParams, localize: LocalizeParams,
    seed: int, batch_size: int,
) -> tuple[dict, tuple]:
    """One split's block of the report, and what the plots need of it (rows, images, detections, kept boxes, the
    decision and its probability)."""
    detector, classifier, decision = predictor.detector, predictor.classifier, predictor.decision
    rows, images = _split_data(processed_dir, split)
    labels = np.array([int(bool(r.boxes)) for r in rows])
    if len(np.unique(labels)) < 2:
        raise DatasetError(f"the {split} split has a single class: AUROC is undefined; use a larger split")
    sizes = [(r.rows, r.columns) for r in rows]
    raw = raw_outputs(classifier, detector, images, sizes, batch_size)
    probability = decision.probability(raw.classifier_logits, raw.detector_logits)
    positive = probability >= decision.threshold
    kept = boxes_under(raw.detections, positive, predictor.box_threshold)
    scores = {"decision": probability, "detector": np.array([d.image_probability for d in raw.detections]),
              "max_box_score": np.array([d.max_box_score for d in raw.detections]),
              "classifier": classifier_probability(classifier, raw.classifier_logits)}
    cam_threshold = localize.threshold if localize.threshold is not None else classifier.threshold
    cams = localize_images(classifier, np.asarray(images), [(r.rows, r.columns, r.pixel_spacing_mm) for r in rows],
                           cam_threshold, localize.cam_threshold, localize.min_area, batch_size)
    block = {
        "model_selected_on_this_split": split == "val",
        "detector": box_metrics(raw.detections, kept, rows) | {
            "rsna_score_ci95": rsna_interval(kept, [r.boxes for r in rows], params.bootstrap_resamples, seed),
            "ap50_ci95": ap50_interval(raw.detections, [r.boxes for r in rows], params.bootstrap_resamples, seed)},
        "boxes_under_negative_labels": int(sum(len(b) for (b, _), p in zip(kept, positive) if not p)),
        "image_auroc": image_aurocs(labels, scores, params.bootstrap_resamples, seed),
        "cam_baseline": localization_metrics(cams, [r.boxes for r in rows], sizes),
    }
    return block, (rows, images, raw.detections, kept, positive, probability)


def headline(report: dict) -> dict:
    """What ``dvc metrics diff`` compares: the headline split's RSNA score, AP, image AUROC and size agreement.

    Three decimals; ``split`` names the split (test, or val when there is no test split: optimistic).
    """
    split = report["headline_split"]
    block = report[split]
    size = block["detector"]["size_true_positives"]
    values = {
        "rsna_score": block["detector"]["rsna_score"],
        "ap50": block["detector"]["ap50"],
        # AP@[0.5:0.95] is in the report; the headline keeps `dvc metrics show` near a screen's width
        "auroc": block["image_auroc"][report["image_score"]["gate"]]["auroc"],  # column shared with the classifier's
        "size_spearman": size["spearman"],
        "area_mae": size["mean_absolute_error"],  # fraction of the image
    }
    return {"split": split} | {k: None if v is None else round(float(v), 3) for k, v in values.items()}


def _size_points(rows: Sequence[ManifestRow], kept: Kept) -> list[dict]:
    points = []
    for r, (boxes, _) in zip(rows, kept):
        if len(boxes) and r.boxes:
            points.append({"true_area_percent": 100 * area_fraction(r.boxes, r.rows, r.columns),
                           "predicted_area_percent": 100 * area_fraction(boxes, r.rows, r.columns)})
    return points


def _write_plots(plots_dir: Path, sweep: list[dict], headline: tuple, overlays: int, synthetic: bool) -> None:
    rows, images, detections, kept, _, probability = headline
    write_json(plots_dir / "thresholds.json", sweep)
    write_json(plots_dir / "size.json", _size_points(rows, kept))
    roles: dict[str, list[tuple[float, int]]] = {role: [] for role in OVERLAY_ROLES}
    for i, (r, (boxes, scores)) in enumerate(zip(rows, kept)):
        if len(boxes):
            roles["tp" if r.boxes else "fp"].append((-float(scores.max()), i))
        elif r.boxes:
            roles["fn"].append((-float(probability[i]), i))
    size = images.shape[1]
    notes = ["phantom data, model trained on the phantom"] if synthetic else []
    with atomic_dir(plots_dir / "overlays") as tmp:
        for role, ranked in roles.items():
            for rank, (_, i) in enumerate(sorted(ranked)[:overlays], start=1):
                r, (boxes, scores) = rows[i], kept[i]
                scale = lambda b: to_array_pixels(b, r.rows, r.columns, size)  # noqa: E731
                draw_overlay(
                    np.asarray(images[i]), np.zeros((size, size), np.float32), [scale(b) for b in boxes],
                    [scale(b) for b in r.boxes], float(probability[i]), tmp / overlay_file(role, rank),
                    title=f"{role.upper()} #{rank}", box_scores=list(scores), notes=notes,
                )


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else scale * value


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _write_markdown(path: Path, report: dict, plots_dir: Path) -> None:
    """A short section for reports/report.md: the tables, and the overlays by relative link."""
    lines = ["## The detector (trained on the RSNA boxes) against the CAM baseline", ""]
    if report["synthetic"]:
        lines += [f"**Synthetic data.** These numbers are on the phantom dataset, with models {report['note']}. "
                  "They measure the software, not clinical performance, and are not comparable with scores on the "
                  "real RSNA data (the challenge's winning ensemble scored 0.253 there).", ""]
    chosen = report["chosen_on_val"]
    lines.append(f"Chosen on val: boxes only on images the decision ({chosen['decision']}, calibrated) calls positive "
                 f"(p >= {chosen['decision_threshold']:.3f}), box threshold {chosen['box_threshold']}, "
                 f"NMS IoU {chosen['nms_iou']}, at most {chosen['max_boxes']} boxes. " + (
                     "Val chose them; test is the headline." if "test" in report else
                     "Val chose them and is the only split scored (no test split): its numbers are optimistic."))
    splits = [s for s in SPLITS if s in report]
    name = report["headline_split"]
    block = report[name]
    lines += ["", "| metric | " + " | ".join([f"detector {s}" for s in splits] + [f"CAM {s}" for s in splits]) + " |",
              "|---" * (1 + 2 * len(splits)) + "|"]
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
    for metric, detector, cam in table:
        cells = [_fmt(detector(report[s])) for s in splits] + [_fmt(cam(report[s])) for s in splits]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    mm2 = block["detector"]["size_true_positives_mm2"]
    cells = ["" if s != name else _fmt(mm2['mean_absolute_error_mm2'], 0) for s in splits] + [""] * len(splits)
    lines.append(f"| area MAE, mm² ({name}, n={mm2['n']}) |" + "".join(f" {c} |" if c else " |" for c in cells))
    ci, ap_ci = block["detector"]["rsna_score_ci95"], block["detector"]["ap50_ci95"]
    lines += ["", f"{name.capitalize()} RSNA score {_fmt(block['detector']['rsna_score'])}, bootstrap 95 % CI "
                  f"{_fmt(ci['low'])}–{_fmt(ci['high'])}; AP@0.5 {_fmt(block['detector']['ap50'])}, "
                  f"{_fmt(ap_ci['low'])}–{_fmt(ap_ci['high'])} (images resampled)."]
    lines += ["", f"Image-level AUROC on {name} (bootstrap 95 % interval):", "", "| image score | AUROC | 95 % CI |",
              "|---|---|---|"]
    for metric, value in block["image_auroc"].items():
        ci = value["ci95"]
        lines.append(f"| {metric} | {_fmt(value['auroc'])} | {_fmt(ci['low'])}–{_fmt(ci['high'])} |")
    lines += ["", f"Boxes are gated by the {report['image_score']['gate']}: {report['image_score']['why']} "
              f"(boxes under a negative label on {name}: {block['boxes_under_negative_labels']}).", ""]
    overlays = sorted((plots_dir / "overlays").glob("*.png"))
    relative = Path(os.path.relpath(plots_dir / "overlays", path.parent))  # links work from the report's folder
    for role, caption in (("tp", "true positives"), ("fp", "false positives"), ("fn", "misses")):
        found = [p for p in overlays if p.name.startswith(role + "_")]
        if found:
            lines.append(f"{caption}: " + " ".join(f"![{p.stem}]({relative / p.name})" for p in found))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
