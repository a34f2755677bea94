"""The decide stage: one image-level decision, its calibration, the box threshold and the OOD guard, all on val.

Reads the classifier's and the detector's model files, runs both on train (features for the guard)
and val, and writes ``models/pneumonia.safetensors`` (:mod:`pneumonia.prediction.predictor`), the one file
``pneumonia predict`` loads, and ``reports/decision.json``: every (candidate, calibration) pair's
out-of-fold log loss, ECE and AUROC on val (:mod:`pneumonia.prediction.decision`), the choice, the box
threshold's sweep, and the guard's threshold. Nothing here reads the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from pneumonia.core.atomic import write_json
from pneumonia.classification.classifier import build_classifier
from pneumonia.prediction.decision import choose_decision
from pneumonia.detection.detector import build_detector_from
from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.box_metrics import box_threshold_sweep, prevalence_weights, target_prevalence
from pneumonia.data.manifest import read_manifest, split_rows
from pneumonia.core.model_file import read_model
from pneumonia.prediction.ood import fit_guard, turned_copies
from pneumonia.evaluation.operating_points import threshold_for_sensitivity
from pneumonia.core.params import DecideParams
from pneumonia.prediction.predictor import RawOutputs, boxes_under, raw_outputs, save_predictor
from pneumonia.classification.inference import classifier_outputs, default_device


def choose_box_threshold(
    raw: RawOutputs, positive: np.ndarray, truth: Sequence, candidates: Sequence[float],
    prevalence: float | None = None,
) -> tuple[float, list[dict]]:
    """The box threshold of best val RSNA score when only images the decision calls positive keep boxes.

    ``prevalence``: val's score reweighted to it (:func:`prevalence_weights`); None = val's own.
    Ties go to the higher threshold (fewer boxes).
    """
    weights = prevalence_weights(truth, prevalence)
    sweep = box_threshold_sweep(lambda t: boxes_under(raw.detections, positive, t), truth, candidates, weights)
    best = max(sweep, key=lambda row: (row["rsna_score"], row["box_threshold"]))
    return best["box_threshold"], sweep


def run(
    processed_dir: Path, classifier_path: Path, detector_path: Path, params: DecideParams, target_sensitivity: float,
    box_candidates: Sequence[float], source: str, seed: int, threshold_prevalence: float | str | None,
    dataset_json: Path = Path("reports/dataset.json"),
    model_path: Path = Path("models/pneumonia.safetensors"), report_json: Path = Path("reports/decision.json"),
) -> dict:
    """Choose and fit everything on val (the guard's Gaussian on train); write the predictor and the report.

    ``threshold_prevalence`` is ``detect.threshold_prevalence``: the box threshold is chosen for that prevalence
    (null = the train split's; "val" = val's own, unweighted), as the detector's thresholds are.
    """
    device = default_device()
    classifier_file = read_model(classifier_path, "classifier", "retrain it with `dvc repro train`")
    detector_file = read_model(detector_path, "detector", "retrain it with `dvc repro detect`")
    classifier = build_classifier(Path(classifier_path), *classifier_file, device)
    detector = build_detector_from(detector_path, *detector_file, device)
    manifest = read_manifest(processed_dir)
    val_rows = split_rows(manifest, "val")
    labels = np.array([r.label for r in val_rows])
    if len(np.unique(labels)) < 2:
        raise DatasetError("the val split has a single class: nothing can be calibrated; enlarge split.train_size's "
                           "complement or set split.stratify: true")
    train_images = np.load(processed_dir / "train.npy", mmap_mode="r")
    _, train_features = classifier_outputs(classifier, train_images, params.batch_size)
    raw = raw_outputs(classifier, detector, np.load(processed_dir / "val.npy", mmap_mode="r"),
                      [(r.rows, r.columns) for r in val_rows], params.batch_size)
    logits = np.stack([raw.classifier_logits, raw.detector_logits], axis=1)
    decision, compared = choose_decision(
        labels, logits, params.folds, seed, lambda y, p: threshold_for_sensitivity(y, p, target_sensitivity)
    )
    positive = decision.probability(logits[:, 0], logits[:, 1]) >= decision.threshold
    prevalence = target_prevalence(threshold_prevalence, split_rows(manifest, "train"))
    box_threshold, sweep = choose_box_threshold(raw, positive, [r.boxes for r in val_rows], box_candidates, prevalence)
    turned = turned_copies(train_images, params.orientation_images, seed) if params.orientation_images else None
    turned_features = None if turned is None else classifier_outputs(classifier, turned, params.batch_size)[1]
    guard = fit_guard(train_features, raw.features, params.ood_quantile, turned_features)
    counts = json.loads(Path(dataset_json).read_text())["counts"]
    trained_on = {"source": source, "patients": {split: counts[split]["total"] for split in counts}}
    save_predictor(model_path, classifier_file, detector_file, decision, box_threshold, guard, trained_on)
    report = {
        "chosen_on": "val",
        "decision": decision.to_json() | {"isotonic": None if decision.isotonic is None else "knots in the model file"},
        "target_sensitivity": target_sensitivity,
        "val_prevalence": float(labels.mean()),
        "box_threshold_prevalence": {"setting": threshold_prevalence, "weighted": prevalence is not None,
                                     "value": float(labels.mean()) if prevalence is None else prevalence},
        "compared_out_of_fold": compared,
        "folds": params.folds,
        "box_threshold": box_threshold,
        "box_threshold_sweep_val": sweep,
        "ood": {"threshold": guard.threshold, "quantile": guard.quantile,
                "val_flagged": float(np.mean(guard.unlike(raw.features))), "features": int(train_features.shape[1]),
                "orientation_check": guard.upright is not None, "upright_threshold": guard.upright_threshold,
                "orientation_images": 0 if turned is None else len(turned),
                "val_flagged_by_distance": float(np.mean(guard.distance(raw.features) > guard.threshold)),
                "fitted_on_train_images": int(len(train_features))},
        "trained_on": trained_on,
    }
    write_json(report_json, report)
    return report
