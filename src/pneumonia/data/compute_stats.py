"""The compute_stats stage: normalisation mean/std of the train split, class counts, and a prevalence check.

Streamed image by image in float64, by the reference's formula:
mean = mean of per-image means; std = sqrt(mean of per-image mean squares - mean^2).
Both are on the [0, 1] intensity scale (array value / 255).

The prevalence check (:func:`prevalence_check`) asks whether the splits' shares of positives differ
beyond chance: thresholds chosen on val (the detector's gate and box threshold, the decision's) are
tuned to val's prevalence, and the RSNA score of the same thresholds changes with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from scipy.stats import chi2_contingency

from pneumonia.core.atomic import write_json
from pneumonia.core.errors import DatasetError
from pneumonia.data.manifest import read_manifest
from pneumonia.data.split import SPLITS

BLOCK = 256  # images read per step: bounded memory, few Python iterations
# The prevalence check's significance level: random patient-level splits differ by chance, and a warning
# on every run would be ignored; at 0.001 one dataset in a thousand warns by chance, while a real shift
# (train 26 % / val 36 % / test 12 % over 1,500 patients) gives p ~ 1e-10.
PREVALENCE_ALPHA = 0.001


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


def prevalence_check(counts: dict[str, dict[str, int]], alpha: float = PREVALENCE_ALPHA) -> dict:
    """Whether the splits' prevalences differ beyond chance: a chi-squared test of homogeneity.

    ``counts``: per split, {"positive", "negative", ...} patients. The test is Pearson's chi-squared on the
    2 x k table of (positive, negative) counts per split (``scipy.stats.chi2_contingency``; with two splits
    it applies Yates' correction): the question is whether k independent binomial samples share one
    proportion, which is what that test asks, for any k, and the counts here are large enough for its
    approximation (below about 5 expected patients a cell, as in tiny test datasets, its p-value is rough;
    the check only advises). ``warning`` is a sentence when p < ``alpha``, else None; splits without
    patients are left out, and with fewer than two splits or a single class nothing is tested.
    """
    splits = [s for s in counts if counts[s]["positive"] + counts[s]["negative"] > 0]
    prevalence = {s: counts[s]["positive"] / (counts[s]["positive"] + counts[s]["negative"]) for s in splits}
    table = np.array([[counts[s]["positive"] for s in splits], [counts[s]["negative"] for s in splits]])
    result = {"test": "chi-squared test of homogeneity, positives vs negatives per split", "alpha": alpha,
              "prevalence": prevalence, "statistic": None, "p_value": None, "warning": None}
    if len(splits) < 2 or (table.sum(axis=1) == 0).any():
        return result
    test = chi2_contingency(table)
    result |= {"statistic": float(test.statistic), "p_value": float(test.pvalue)}
    if test.pvalue < alpha:
        shares = ", ".join(f"{s} {100 * p:.1f} %" for s, p in prevalence.items())
        result["warning"] = (f"the splits' prevalences differ beyond chance ({shares}; chi-squared p = "
                             f"{test.pvalue:.1g} < {alpha}): thresholds chosen on val will not fit test; "
                             "set split.stratify: true in params.yaml")
    return result


def run(processed_dir: Path, out_json: Path, headline_json: Path | None = None) -> dict:
    """Write ``out_json`` with the train mean/std, the counts per split and class, and :func:`prevalence_check`.

    ``headline_json`` (for ``dvc metrics``) gets the patients per split only.
    """
    manifest = read_manifest(processed_dir)
    mean, std = mean_std_of_blocks(read_blocks(processed_dir / "train.npy"))
    counts = {}
    for split in SPLITS:
        labels = [r.label for r in manifest if r.split == split]
        counts[split] = {"total": len(labels), "positive": sum(labels), "negative": len(labels) - sum(labels)}
    result = {"mean": round(float(mean), 6), "std": round(float(std), 6), "counts": counts,
              "prevalence_check": prevalence_check(counts)}
    write_json(out_json, result)
    if headline_json is not None:
        write_json(headline_json, {split: counts[split]["total"] for split in SPLITS})
    return result
