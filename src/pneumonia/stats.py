"""The compute_stats stage: normalisation mean/std of the train split, and class counts.

Streamed image by image in float64, by the reference's formula:
mean = mean of per-image means; std = sqrt(mean of per-image mean squares - mean^2).
Both are on the [0, 1] intensity scale (array value / 255).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pneumonia.atomic import write_json
from pneumonia.errors import DatasetError
from pneumonia.manifest import read_manifest
from pneumonia.split import SPLITS

BLOCK = 256  # images read per step: bounded memory, few Python iterations


def mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of an ``N x H x W`` uint8 array (or memmap), on the [0, 1] scale."""
    return mean_std_of_blocks(images[start : start + BLOCK] for start in range(0, len(images), BLOCK))


def mean_std_of_blocks(blocks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Mean and std, on the [0, 1] scale, of the images in ``blocks`` of ``n x H x W`` uint8 arrays."""
    count, sum_means, sum_squares = 0, 0.0, 0.0
    for images in blocks:
        block = np.asarray(images, dtype=np.float64) / 255.0
        sum_means += block.mean(axis=(1, 2)).sum()
        sum_squares += (block**2).mean(axis=(1, 2)).sum()
        count += len(block)
    if count == 0:
        raise DatasetError("the train split is empty; there is nothing to compute statistics on")
    mean = sum_means / count
    return mean, math.sqrt(max(sum_squares / count - mean**2, 0.0))


def read_blocks(path: Path, rows: int = BLOCK) -> Iterator[np.ndarray]:
    """The images of an ``N x H x W`` .npy file, ``rows`` at a time, with plain reads.

    Not a memory map: a map keeps every page it has touched in the process's resident
    memory until it is closed (the whole split at the end of a pass, 1.2 GB for RSNA's
    24,000 train images at 224 pixels); what a read brings in stays in the page cache.
    """
    header = np.load(path, mmap_mode="r")
    shape, dtype, offset = header.shape, header.dtype, header.offset
    del header
    per_image = math.prod(shape[1:])
    with open(path, "rb") as handle:
        handle.seek(offset)
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            yield np.fromfile(handle, dtype=dtype, count=n * per_image).reshape(n, *shape[1:])


def run(processed_dir: Path, out_json: Path, headline_json: Path | None = None) -> dict:
    """Write ``out_json`` with the train mean/std and the counts per split and class.

    ``headline_json`` (for ``dvc metrics``) gets the patients per split only.
    """
    manifest = read_manifest(processed_dir)
    mean, std = mean_std_of_blocks(read_blocks(processed_dir / "train.npy"))
    counts = {}
    for split in SPLITS:
        labels = [r.label for r in manifest if r.split == split]
        counts[split] = {"total": len(labels), "positive": sum(labels), "negative": len(labels) - sum(labels)}
    result = {"mean": round(float(mean), 6), "std": round(float(std), 6), "counts": counts}
    write_json(out_json, result)
    if headline_json is not None:
        write_json(headline_json, {split: counts[split]["total"] for split in SPLITS})
    return result
