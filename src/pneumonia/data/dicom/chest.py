"""Whether a DICOM is a chest radiograph, by its header: :func:`chest_problem`. Not the reader's question."""

from __future__ import annotations

from pathlib import Path

from pneumonia.core.errors import NotChestError
from pneumonia.data.dicom.header import DicomInfo

NOT_CHEST = "not a chest radiograph"  # how chest_problem's reasons start
PROJECTION_RADIOGRAPHY = ("CR", "DX", "DR")
"""Modality values of a projection radiograph (DR is not a DICOM term, but some systems write it)."""
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORACE")  # English, German/French, Spanish, Italian


def chest_problem(info: DicomInfo) -> str | None:
    """Why the file is not a chest radiograph, or None: Modality not CR/DX/DR, or BodyPartExamined not a chest.

    A missing or empty tag is not a reason: many exports drop BodyPartExamined.
    """
    if info.modality and info.modality.upper() not in PROJECTION_RADIOGRAPHY:
        return f"{NOT_CHEST}: Modality={info.modality}"
    body = info.body_part.strip().upper()
    if body and not any(word in _CHEST_WORDS for word in body.replace("_", " ").replace("-", " ").split()):
        return f"{NOT_CHEST}: BodyPartExamined={info.body_part.strip()}"
    return None


def check_chest(path: str | Path, info: DicomInfo) -> None:
    """Raise :class:`NotChestError` when :func:`chest_problem` finds one."""
    problem = chest_problem(info)
    if problem:
        raise NotChestError(path, problem)
