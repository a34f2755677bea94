"""Tiny phantom datasets run through the real conversion and statistics, for tests that train."""

from pathlib import Path

from pneumonia.data import dicom_to_npy, compute_stats
from pneumonia.data.phantom.dataset import generate
from pneumonia.core.params import Params


def prepare(root: Path, params: Params, patients: int, size: int, seed: int) -> Path:
    """Phantom DICOMs -> ``root/processed`` (arrays + manifest) and ``root/dataset.json``; returns ``root``."""
    generate(root / "raw", patients=patients, size=size, seed=seed, workers=1)
    dicom_to_npy.run(root / "raw", root / "processed", params.dicom_to_npy, params.split)
    compute_stats.run(root / "processed", root / "dataset.json")
    return root
