"""The compute_stats stage: normalisation mean/std of the train split, and class counts.

Streamed image by image in float64, by the reference's formula:
mean = mean of per-image means; std = sqrt(mean of per-image mean squares - mean^2).
Both are on the [0, 1] intensity scale (array value / 255).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pneumonia.atomic import write_json
from pneumonia.errors import DatasetError
from pneumonia.manifest import read_manifest
from pneumonia.split import SPLITS

BLOCK = 256  # images read per step: bounded memory, few Python iterations


def mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of an ``N x H x W`` uint8 array (or memmap), on the [0, 1] scale."""
    if len(images) == 0:
        raise DatasetError("the train split is empty; there is nothing to compute statistics on")
    sum_means = sum_squares = 0.0
    for start in range(0, len(images), BLOCK):
        block = np.asarray(images[start : start + BLOCK], dtype=np.float64) / 255.0
        sum_means += block.mean(axis=(1, 2)).sum()
        sum_squares += (block**2).mean(axis=(1, 2)).sum()
    mean = sum_means / len(images)
    return mean, math.sqrt(max(sum_squares / len(images) - mean**2, 0.0))


def run(processed_dir: Path, out_json: Path, headline_json: Path | None = None) -> dict:
    """Write ``out_json`` with the train mean/std and the counts per split and class.

    ``headline_json`` (for ``dvc metrics``) gets the patients per split only.
    """
    manifest = read_manifest(processed_dir)
    mean, std = mean_std(np.load(processed_dir / "train.npy", mmap_mode="r"))
    counts = {}
    for split in SPLITS:
        labels = [r.label for r in manifest if r.split == split]
        counts[split] = {"total": len(labels), "positive": sum(labels), "negative": len(labels) - sum(labels)}
    result = {"mean": round(float(mean), 6), "std": round(float(std), 6), "counts": counts}
    write_json(out_json, result)
    if headline_json is not None:
        write_json(headline_json, {split: counts[split]["total"] for split in SPLITS})
    return result
