"""`data/processed/manifest.csv`: one row per patient, the key to the split arrays.

``row`` is the patient's index in ``<split>.npy``; ``boxes`` is a JSON list of
[x, y, width, height] in pixels of the original image (``rows`` x ``columns``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pneumonia.core.atomic import atomic_path
from pneumonia.core.errors import DatasetError

MANIFEST = "manifest.csv"
CLASS_NAMES = ("no pneumonia", "pneumonia")  # what label 0 and label 1 are called in plots and reports


@dataclass(frozen=True)
class ManifestRow:
    patient_id: str
    split: str
    row: int
    label: int
    boxes: tuple[tuple[float, float, float, float], ...]
    detailed_class: str
    view: str
    sex: str
    age: int | None
    rows: int  # original image height, pixels
    columns: int  # original image width, pixels
    pixel_spacing_mm: float | None
    pixel_spacing_note: str = ""  # why the spacing is unknown, or that ImagerPixelSpacing was used


_COLUMNS = [f.name for f in fields(ManifestRow)]
_OPTIONAL = ("pixel_spacing_note",)  # written only when a row has one, so a clean dataset's manifest is unchanged


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    columns = [c for c in _COLUMNS if c not in _OPTIONAL or any(getattr(row, c) for row in rows)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            # Field by field rather than dataclasses.asdict, which deep-copies every box (slow on 26k rows).
            record = {name: getattr(row, name) for name in columns}
            record["boxes"] = json.dumps([list(b) for b in row.boxes])
            writer.writerow(["" if v is None else v for v in record.values()])


def read_manifest(processed_dir: str | Path) -> list[ManifestRow]:
    path = Path(processed_dir) / MANIFEST
    if not path.exists():
        raise DatasetError(f"{path}: not found; run the dicom_to_npy stage first (dvc repro)")
    with open(path, newline="") as handle:
        return [
            ManifestRow(
                patient_id=r["patient_id"],
                split=r["split"],
                row=int(r["row"]),
                label=int(r["label"]),
                boxes=tuple(tuple(b) for b in json.loads(r["boxes"])),
                detailed_class=r["detailed_class"],
                view=r["view"],
                sex=r["sex"],
                age=int(r["age"]) if r["age"] else None,
                rows=int(r["rows"]),
                columns=int(r["columns"]),
                pixel_spacing_mm=float(r["pixel_spacing_mm"]) if r["pixel_spacing_mm"] else None,
                pixel_spacing_note=r.get("pixel_spacing_note") or "",
            )
            for r in csv.DictReader(handle)
        ]


def split_rows(manifest: list[ManifestRow], split: str) -> list[ManifestRow]:
    """The rows of one split, in array order."""
    return sorted((r for r in manifest if r.split == split), key=lambda r: r.row)


def split_labels(manifest: list[ManifestRow], split: str) -> np.ndarray:
    """0/1 labels of one split, aligned with ``<split>.npy``."""
    return np.array([r.label for r in split_rows(manifest, split)], dtype=np.int64)
