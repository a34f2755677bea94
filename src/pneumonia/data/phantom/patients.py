"""Phantom patients: class, number of opacities, findings and demographics; no images.

Patient ``i`` is drawn from its own random stream, derived from ``(seed, i)``;
the fractions are those of RSNA's stage 2 training set.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np

# Class names, exactly as in stage_2_detailed_class_info.csv.
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
LUNG_OPACITY = "Lung Opacity"

# Target fractions, from the 26,684 patients of RSNA's stage 2 training set.
POSITIVE_FRACTION = 0.225
NOT_NORMAL_SHARE_OF_NEGATIVES = 44 / 77  # negatives split 44 : 33, Not Normal : Normal
BOX_COUNT_WEIGHTS = (0.43, 0.54, 0.02, 0.002)  # 1, 2, 3, 4 boxes; renormalised when drawn
PA_FRACTION = 0.54
MALE_FRACTION = 0.57
PIXEL_SPACING_MM = (0.14, 0.19)

# Findings of "No Lung Opacity / Not Normal" patients: none of them is an opacity,
# and several are bright, so brightness alone does not tell the classes apart.
NOT_NORMAL_FINDINGS = ("cardiomegaly", "effusion", "nodule", "devices", "haze")
NOT_NORMAL_FINDING_WEIGHTS = (0.25, 0.2, 0.15, 0.3, 0.1)
POSITIVE_DEVICE_FRACTION = 0.3  # opacity patients also carry tubes and leads sometimes


@dataclass(frozen=True)
class Patient:
    """One phantom patient: what the label files and the DICOM header say, and how to draw the image."""

    patient_id: str  # UUID-style, 8-4-4-4-12 lowercase hex
    class_name: str  # NORMAL, NOT_NORMAL or LUNG_OPACITY
    opacities: int  # number of boxes: 1-4 for LUNG_OPACITY, else 0
    findings: tuple[str, ...]  # from NOT_NORMAL_FINDINGS (plus "devices" for some positives)
    view: str  # "PA" or "AP"
    sex: str  # "M" or "F"
    age: int  # years
    pixel_spacing: float  # mm per pixel at the written size
    image_seed: int  # seeds the image of this patient alone


def draw_patients(n: int, seed: int) -> list[Patient]:
    """Draw ``n`` patients' classes, box counts, findings and demographics; no images.

    Patient ``i`` depends only on ``(seed, i)``, so the first ``n`` of a larger
    draw are the same patients.
    """
    return [_draw_patient(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))) for i in range(n)]


def _draw_patient(rng: np.random.Generator) -> Patient:
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    # The class is drawn independently of view, sex and age: no shortcut through them.
    u = rng.random()
    box_weights = np.array(BOX_COUNT_WEIGHTS) / sum(BOX_COUNT_WEIGHTS)
    if u < POSITIVE_FRACTION:
        class_name = LUNG_OPACITY
        opacities = 1 + int(rng.choice(len(box_weights), p=box_weights))
        findings = ("devices",) if rng.random() < POSITIVE_DEVICE_FRACTION else ()
    elif u < POSITIVE_FRACTION + (1 - POSITIVE_FRACTION) * NOT_NORMAL_SHARE_OF_NEGATIVES:
        class_name = NOT_NORMAL
        opacities = 0
        count = 1 + int(rng.random() < 0.35)
        weights = np.array(NOT_NORMAL_FINDING_WEIGHTS) / sum(NOT_NORMAL_FINDING_WEIGHTS)
        picked = rng.choice(len(NOT_NORMAL_FINDINGS), size=count, replace=False, p=weights)
        findings = tuple(NOT_NORMAL_FINDINGS[k] for k in sorted(picked))
    else:
        class_name = NORMAL
        opacities = 0
        findings = ()
    return Patient(
        patient_id=patient_id,
        class_name=class_name,
        opacities=opacities,
        findings=findings,
        view="PA" if rng.random() < PA_FRACTION else "AP",
        sex="M" if rng.random() < MALE_FRACTION else "F",
        # Twelve uniforms make a normal deviate (Irwin-Hall) from exactly rounded sums; numpy's normal calls libm's exp.
        age=int(np.clip(round(48 + 16 * (math.fsum(rng.random(12)) - 6)), 18, 90)),
        pixel_spacing=round(float(rng.uniform(*PIXEL_SPACING_MM)), 3),
        image_seed=int(rng.integers(2**63)),
    )
