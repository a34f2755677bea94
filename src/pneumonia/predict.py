"""`pneumonia predict`: the trained classifier and detector on DICOM files: whether, where and how large.

The image's probability and label are the classifier's (its model file gives image size, mean/std,
threshold, temperature, windowing). The boxes are the detector's (``models/detector.safetensors``, see
:mod:`pneumonia.detection`): (x, y, width, height) in pixels of each ORIGINAL image, each with its
confidence (the detector's score), kept when the detector's own image probability passes its gate
and the box its threshold, both chosen together on val for the best RSNA score. The estimated area
is the union of the boxes, as a percentage of the image and in mm² where PixelSpacing is known.
Files that are not chest radiographs (:func:`pneumonia.dicom.chest_problem`) are not scored unless
``allow_non_chest``: their row says why.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pydicom
from tqdm import tqdm

from pneumonia.atomic import atomic_path
from pneumonia.checkpoint import LoadedModel, load_classifier
from pneumonia.detection.detector import LoadedDetector, area_fraction, detect_images, load_detector
from pneumonia.dicom import chest_problem, read_dicom
from pneumonia.errors import DicomReadError, PneumoniaError
from pneumonia.inference import default_device, predict_probabilities
from pneumonia.overlay import draw_overlay

PROGRESS_MIN_FILES = 8  # a progress bar only for more files than a handful
OVERLAY_SIZE = 512  # pixels: overlays are drawn from the DICOM read again at this size
CSV_COLUMNS = [
    "file", "patientId", "probability", "label", "detector_probability", "boxes", "confidences", "area_percent",
    "area_mm2", "error",
]


@dataclass(frozen=True)
class ImagePrediction:
    """What the models say about one image; boxes in ORIGINAL pixels, most confident first."""

    probability: float  # the classifier's: sigmoid(logit / temperature)
    positive: bool  # probability >= the classifier's threshold
    detector_probability: float  # the detector's image probability: its boxes are kept only above its gate
    boxes: tuple[tuple[float, float, float, float], ...]  # (x, y, width, height)
    confidences: tuple[float, ...]
    area_fraction: float  # the union of the boxes over the image (0 without boxes)
    area_mm2: float | None  # the same in mm², None without PixelSpacing


@dataclass(frozen=True)
class FilePrediction:
    """One file's result: ``localization`` when scored, else ``error`` (one line) or ``not_scored`` (why)."""

    file: Path
    patient_id: str
    localization: ImagePrediction | None = None
    error: str | None = None
    not_scored: str | None = None  # readable, but not a chest radiograph (and not allowed)


def find_dicoms(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given (any name), and every ``*.dcm`` under a folder (recursively, any case, sorted).

    Raises :class:`PneumoniaError` for a path that does not exist or when no file is found.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file()))
        elif path.exists():
            files.append(path)
        else:
            raise PneumoniaError(f"{path}: no such file or folder; give DICOM files or folders holding *.dcm files")
    files = list(dict.fromkeys(files))  # a file named twice (or inside a folder also named) once
    if not files:
        raise PneumoniaError(f"no DICOM (*.dcm) found in {', '.join(map(str, paths))}; give DICOM files or folders")
    return files


def patient_id_of(path: Path) -> str:
    """The DICOM's PatientID, else the file name without its extension."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        value = str(ds.get("PatientID", "")).strip()
    except Exception:  # the pixels were readable; a header quirk only costs the ID
        value = ""
    return value or path.stem


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    images: np.ndarray, infos: Sequence, model: LoadedModel, detector: LoadedDetector, batch_size: int
) -> list[ImagePrediction]:
    """Both models on ``N x S x S`` uint8 images of the classifier's size; ``infos`` give each original's size."""
    probabilities = predict_probabilities(model, images, batch_size)
    found = detect_images(detector, images, [(i.rows, i.columns) for i in infos], batch_size)
    predictions = []
    for probability, detections, info in zip(probabilities, found, infos):
        boxes, scores = detections.kept(detector.image_threshold, detector.box_threshold)
        fraction = area_fraction(boxes, info.rows, info.columns)
        spacing = info.pixel_spacing_mm
        predictions.append(
            ImagePrediction(
                probability=float(probability),
                positive=bool(probability >= model.threshold),
                detector_probability=detections.image_probability,
                boxes=tuple(tuple(float(v) for v in b) for b in boxes),
                confidences=tuple(float(s) for s in scores),
                area_fraction=fraction,
                area_mm2=None if spacing is None else fraction * info.rows * info.columns * spacing**2,
            )
        )
    return predictions


def predict_files(
    files: Sequence[Path],
    model: LoadedModel,
    detector: LoadedDetector,
    batch_size: int,
    overlays_dir: Path | None = None,
    allow_non_chest: bool = False,
) -> list[FilePrediction]:
    """Read, classify and detect in each file, ``batch_size`` at a time; unreadable files carry their error.

    A file that is not a chest radiograph is not scored (it carries the reason)
    unless ``allow_non_chest``.
    """
    results: list[FilePrediction] = []
    overlay_names: set[str] = set()
    with tqdm(total=len(files), unit="file", disable=len(files) < PROGRESS_MIN_FILES, desc="predict") as bar:
        for chunk in _chunks(list(files), batch_size):
            images, infos, readable = [], [], []
            for path in chunk:
                try:
                    image, info = read_dicom(path, model.image_size, windowing=model.windowing)
                except DicomReadError as exc:
                    results.append(FilePrediction(path, path.stem, error=exc.reason))
                    continue
                problem = None if allow_non_chest else chest_problem(info)
                if problem:
                    results.append(FilePrediction(path, patient_id_of(path), not_scored=problem))
                    continue
                images.append(image)
                infos.append(info)
                readable.append((len(results), path))
                results.append(FilePrediction(path, patient_id_of(path)))
            if images:
                found = predict_images(np.stack(images), infos, model, detector, batch_size)
                for (index, path), prediction, info in zip(readable, found, infos):
                    results[index] = FilePrediction(path, results[index].patient_id, prediction)
                    if overlays_dir is not None:
                        name = _unique_name(path.stem, overlay_names)
                        _draw(path, prediction, model, info.rows, info.columns, Path(overlays_dir) / f"{name}.png")
            bar.update(len(chunk))
    return results


def _unique_name(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _draw(path: Path, prediction: ImagePrediction, model: LoadedModel, rows: int, columns: int, out: Path) -> None:
    """The DICOM read again at ``OVERLAY_SIZE`` with the detector's boxes (no truth is known here)."""
    image, _ = read_dicom(path, OVERLAY_SIZE, windowing=model.windowing)
    sx, sy = OVERLAY_SIZE / columns, OVERLAY_SIZE / rows
    draw_overlay(
        image,
        np.zeros(image.shape, np.float32),
        [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in prediction.boxes],
        None,
        prediction.probability,
        out,
        title=path.name,
        display_size=OVERLAY_SIZE,
    )


def _fields(prediction: FilePrediction) -> dict[str, str]:
    """The CSV's (and the table's) text for one file."""
    found = prediction.localization
    reason = prediction.error or prediction.not_scored or ""
    row = {"file": str(prediction.file), "patientId": prediction.patient_id, "error": reason}
    if found is None:
        return row | {k: "" for k in CSV_COLUMNS if k not in row}
    return row | {
        "probability": f"{found.probability:.4f}",
        "label": str(int(found.positive)),
        "detector_probability": f"{found.detector_probability:.4f}",
        "boxes": ";".join(" ".join(f"{v:.1f}" for v in b) for b in found.boxes),
        "confidences": ";".join(f"{c:.4f}" for c in found.confidences),
        "area_percent": f"{100 * found.area_fraction:.2f}",
        "area_mm2": "" if found.area_mm2 is None else f"{found.area_mm2:.0f}",
    }


def write_predictions_csv(path: Path, predictions: Sequence[FilePrediction]) -> None:
    """One row per file: ``CSV_COLUMNS``; boxes as "x y w h;x y w h" in original pixels."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for prediction in predictions:
            writer.writerow(_fields(prediction))


def write_submission(path: Path, predictions: Sequence[FilePrediction]) -> None:
    """Kaggle's RSNA submission: ``patientId,PredictionString``, each box "confidence x y width height".

    Files that could not be read or were not scored are left out (the command's
    exit code says so); a patient without boxes gets an empty string.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientId", "PredictionString"])
        for prediction in predictions:
            if prediction.localization is None:
                continue
            found = prediction.localization
            ranked = sorted(zip(found.confidences, found.boxes), key=lambda pair: -pair[0])
            text = " ".join(f"{c:.4f} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for c, (x, y, w, h) in ranked)
            writer.writerow([prediction.patient_id, text])


def format_table(predictions: Sequence[FilePrediction], threshold: float) -> str:
    """A plain-text table of the predictions, one line per file."""
    label = f"label (p>={threshold:.2f})"
    header = ["file", "patientId", "probability", label, "boxes (x y w h)", "area %", "area mm2"]
    lines = []
    for prediction in predictions:
        f = _fields(prediction)
        if prediction.error:
            lines.append([f["file"], f["patientId"], "error: " + prediction.error, "", "", "", ""])
        elif prediction.not_scored:
            lines.append([f["file"], f["patientId"], "not scored: " + prediction.not_scored, "", "", "", ""])
        else:
            lines.append(
                [f["file"], f["patientId"], f["probability"], f["label"], f["boxes"] or "-", f["area_percent"],
                 f["area_mm2"] or "-"]
            )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    # An error message is long: let it run past its column rather than widen the whole table.
    widths[2] = max(len(header[2]), max((len(r[2]) for r in lines if r[3]), default=0))
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def run(
    paths: Sequence[str | Path],
    model_path: Path,
    out_csv: Path | None = Path("predictions.csv"),
    overlays_dir: Path | None = None,
    submission: Path | None = None,
    batch_size: int = 32,
    detector_path: Path = Path("models/detector.safetensors"),
    allow_non_chest: bool = False,
) -> tuple[LoadedModel, list[FilePrediction]]:
    """Predict every DICOM in ``paths``; write the CSV, overlays and submission asked for.

    Raises :class:`PneumoniaError` (missing checkpoint or detector, no DICOM found); a file that
    cannot be read is returned with its error instead.
    """
    files = find_dicoms(paths)
    device = default_device()
    model = load_classifier(model_path, device)
    detector = load_detector(detector_path, device)
    predictions = predict_files(files, model, detector, batch_size, overlays_dir, allow_non_chest)
    if out_csv is not None:
        write_predictions_csv(out_csv, predictions)
    if submission is not None:
        write_submission(submission, predictions)
    return model, predictions
