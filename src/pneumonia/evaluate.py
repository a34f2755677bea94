"""The evaluate stage: the trained classifier on the val split.

Writes ``metrics/eval.json`` (nested by split, then threshold), the ROC and
precision-recall curves and a per-image predictions CSV for `dvc plots show`.
The checkpoint was selected on val (best ``val/auroc``), so these val metrics
are optimistic; eval.json says so with ``model_selected_on_this_split``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from pneumonia.atomic import atomic_path, write_json
from pneumonia.checkpoint import LoadedModel, load_classifier
from pneumonia.errors import DatasetError
from pneumonia.manifest import read_manifest, split_rows
from pneumonia.metrics import pr_curve_points, ranking_metrics, roc_curve_points, threshold_metrics
from pneumonia.params import EvaluateParams

SPLIT = "val"


def threshold_key(threshold: float) -> str:
    """A key without dots, so `dvc metrics` flattening stays unambiguous: 0.5 -> threshold_0p50."""
    return f"threshold_{threshold:.2f}".replace(".", "p")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict_probabilities(model: LoadedModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities for an ``N x S x S`` uint8 array (or memmap) of the model's image size."""
    if images.shape[1:] != (model.image_size, model.image_size):
        raise DatasetError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model was trained on "
            f"{model.image_size}x{model.image_size}; rerun dicom_to_npy and train together (dvc repro)"
        )
    device = next(model.network.parameters()).device
    probs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        batch = (batch.unsqueeze(1) / 255.0 - model.mean) / model.std
        probs.append(model.network(batch).squeeze(1).sigmoid().float().cpu())
    return torch.cat(probs).numpy().astype(np.float64)


def run(
    processed_dir: Path,
    model_path: Path,
    params: EvaluateParams,
    out_json: Path = Path("metrics/eval.json"),
    plots_dir: Path = Path("plots"),
) -> dict:
    model = load_classifier(model_path, default_device())
    rows = split_rows(read_manifest(processed_dir), SPLIT)
    labels = np.array([r.label for r in rows])
    probs = predict_probabilities(model, np.load(processed_dir / f"{SPLIT}.npy", mmap_mode="r"), params.batch_size)

    report = {
        "n": len(labels),
        "positive": int(labels.sum()),
        "negative": int(len(labels) - labels.sum()),
        "model_selected_on_this_split": True,
        **ranking_metrics(labels, probs),
    }
    for threshold in params.thresholds:
        report[threshold_key(threshold)] = threshold_metrics(labels, probs, threshold)
    result = {SPLIT: report}

    write_json(plots_dir / "roc.json", {"roc": roc_curve_points(labels, probs)})
    write_json(plots_dir / "precision_recall.json", {"precision_recall": pr_curve_points(labels, probs)})
    with atomic_path(plots_dir / f"predictions_{SPLIT}.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label", "probability", "predicted"])
        first = params.thresholds[0]
        for row, label, prob in zip(rows, labels, probs):
            writer.writerow([row.patient_id, int(label), f"{prob:.6f}", int(prob >= first)])
    write_json(out_json, result)
    return result
