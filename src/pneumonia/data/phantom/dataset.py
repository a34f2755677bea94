"""The phantom dataset in RSNA's layout (:func:`generate`), a sheet to tune it by eye, and chests without lungs."""

from __future__ import annotations

import ctypes
import functools
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pneumonia.core.atomic import atomic_dir, atomic_path
from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.phantom.findings import Box
from pneumonia.data.phantom.patients import LUNG_OPACITY, NORMAL, NOT_NORMAL, Patient, draw_patients
from pneumonia.data.phantom.render import render


def generate(raw_dir: Path, patients: int, size: int = 1024, seed: int = 42, workers: int = 0) -> None:
    """Write raw_dir/stage_2_train_images/<patientId>.dcm, raw_dir/stage_2_train_labels.csv,
    raw_dir/stage_2_detailed_class_info.csv. workers=0 means one process per CPU core.

    ``raw_dir`` is replaced as a whole, atomically: a crash leaves the old one (or none).
    Box coordinates are pixels of the ``size`` x ``size`` images.
    """
    drawn = draw_patients(patients, seed)
    workers = workers or os.cpu_count() or 1
    with atomic_dir(raw_dir) as tmp:
        images = tmp / "stage_2_train_images"
        images.mkdir()
        write_one = functools.partial(_write_patient, size=size, images=images)
        if workers == 1 or patients < 2:
            boxes = list(map(write_one, drawn))
        else:
            with multiprocessing.Pool(workers, initializer=_keep_freed_memory) as pool:
                boxes = pool.map(write_one, drawn, chunksize=max(1, patients // (workers * 8)))
        labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
        for patient, patient_boxes in zip(drawn, boxes):
            if not patient_boxes:
                labels.append(f"{patient.patient_id},,,,,0")
                classes.append(f"{patient.patient_id},{patient.class_name}")
            for box in patient_boxes:
                labels.append(f"{patient.patient_id},{box.x},{box.y},{box.width},{box.height},1")
                classes.append(f"{patient.patient_id},{patient.class_name}")
        (tmp / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n", newline="\n")
        (tmp / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n", newline="\n")


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep the memory this process frees, rather than give it back to the kernel at once.

    Each image allocates and frees arrays of hundreds of kilobytes. Left to itself,
    glibc hands much of that memory back and faults it in again, page by page, at
    the next allocation: a thousand or more page faults per 1024-pixel image, a
    tenth of its time. Fixed thresholds keep arrays under 16 MiB on the heap and
    up to 64 MiB of it free. Called in the worker processes only, which exit when
    done; nothing where the C library has no mallopt.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, 16 << 20)  # both set: setting one alone makes things worse (no adaptive thresholds)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


# mallopt's parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _write_patient(patient: Patient, size: int, images: Path) -> tuple[Box, ...]:
    """Render and write one patient's DICOM (runs in a worker); return its boxes."""
    rendering = render(patient, size)
    write_dicom(
        images / f"{patient.patient_id}.dcm",
        rendering.pixels,
        patient_id=patient.patient_id,
        sex=patient.sex,
        age=patient.age,
        view=patient.view,
        pixel_spacing=patient.pixel_spacing,
    )
    return rendering.boxes


def preview(path: Path, count: int = 8, size: int = 512, seed: int = 0) -> None:
    """Save a PNG grid of ``count`` phantom images (4 per row), boxes in red, class on top: for tuning by eye.

    Shows the three classes in turn, so a sheet always has positives to look at.
    """
    patients = draw_patients(40 * count, seed)
    by_class = [[p for p in patients if p.class_name == c] for c in (LUNG_OPACITY, NOT_NORMAL, NORMAL)]
    shown = [by_class[i % 3][i // 3] for i in range(count)]
    columns = min(count, 4)
    sheet = Image.new("RGB", (columns * size, math.ceil(count / columns) * size))
    for i, patient in enumerate(shown):
        rendering = render(patient, size)
        tile = Image.fromarray(rendering.pixels).convert("RGB")
        draw = ImageDraw.Draw(tile)
        for box in rendering.boxes:
            draw.rectangle([box.x, box.y, box.x + box.width, box.y + box.height], outline=(255, 0, 0), width=2)
        draw.text((4, 4), f"{patient.class_name} | {patient.view} | {', '.join(patient.findings)}", fill=(255, 255, 0))
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def radiographs_without_lungs(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` phantom chests drawn without air in the lungs (``n x size x size`` uint8): images no training
    image resembles, for the out-of-distribution guard's unlike set."""
    return np.stack([render(p, size, lung_darkness=0.0).pixels for p in draw_patients(n, seed)])
