"""`pneumonia predict`: the predictor on DICOM, PNG or JPEG files: whether, where and how large, or why not.

One model file, the predictor (``models/pneumonia.safetensors``, :mod:`pneumonia.prediction.predictor`), holds
both networks and every number chosen on val. One answer per file, in this order: readable (a single
greyscale image)? a chest radiograph by its header (:func:`pneumonia.data.dicom.chest.chest_problem`; unless
``allow_non_chest``; a PNG or JPEG has no header, so this check cannot be made and its row says so)? like the training images (the out-of-distribution guard; unless
``allow_unlike``)? then the decision's calibrated probability, its label at the threshold chosen on
val, and the detector's boxes only under a positive label: (x, y, width, height) in pixels of each
ORIGINAL image, each with its score, and the estimated area (the union of the boxes) as a percentage
of the image and in mm² where PixelSpacing is known (never for a PNG or JPEG). Each file is read once (at the model's size and,
for an overlay, at the overlay's).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pneumonia.core.atomic import atomic_path
from pneumonia.core.boxes import to_array_pixels
from pneumonia.detection.detector import area_fraction
from pneumonia.data.dicom.chest import chest_problem
from pneumonia.data.dicom.header import DicomInfo
from pneumonia.data.images import read_image_sizes
from pneumonia.data.rsna import IMAGE_SUFFIXES
from pneumonia.core.errors import ImageReadError, PneumoniaError
from pneumonia.classification.inference import default_device
from pneumonia.reporting.overlay import draw_overlay
from pneumonia.prediction.predictor import (
    SYNTHETIC_NOTE, ImageAnswer, Predictor, RawOutputs, answers, load_predictor, raw_outputs,
)

_WANTED = "*" + ", *".join(IMAGE_SUFFIXES)
NO_HEADER = "no DICOM header (PNG or JPEG): not checked to be a chest radiograph, no area in mm²"
PROGRESS_MIN_FILES = 8  # a progress bar only for more files than a handful
OVERLAY_SIZE = 512  # pixels: overlays are drawn at this size from the same read as the model's input
CSV_COLUMNS = [
    "file", "patientId", "status", "probability", "label", "boxes", "confidences", "area_percent", "area_mm2",
    "out_of_distribution", "ood_distance", "classifier_probability", "detector_probability", "reason",
]
STATUSES = ("scored", "unreadable", "not_chest", "unlike_training")
BACKENDS = ("torch", "onnxruntime")  # what runs the networks; everything else is the same code
Forward = Callable[[np.ndarray, Sequence[tuple[int, int]], int], RawOutputs]  # (images, sizes, batch_size)


@dataclass(frozen=True)
class FilePrediction:
    """One file's result: ``answer`` when the models ran on it; ``status`` one of STATUSES; ``reason`` why not
    scored (or, for an image scored although unlike the training images, the guard's line)."""

    file: Path
    patient_id: str
    status: str
    answer: ImageAnswer | None = None
    reason: str = ""
    area_fraction: float | None = None  # of the boxes' union; None without boxes
    area_mm2: float | None = None
    info: DicomInfo | None = None  # the header facts, for a file the models ran on

    @property
    def scored(self) -> bool:
        return self.status == "scored"


def find_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[FilePrediction]]:
    """Files as given (any name), and every ``*.dcm``, ``*.png``, ``*.jpg`` and ``*.jpeg`` under a folder
    (recursively, any case, sorted).

    A path that does not exist, or a folder without a DICOM, is a result row of its own (status
    ``unreadable``), and the other paths are still read. Raises :class:`PneumoniaError` only when
    nothing at all was found.
    """
    files: list[Path] = []
    missing: list[FilePrediction] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            files.extend(found)
            if not found:
                missing.append(FilePrediction(path, "", "unreadable", reason=f"a folder without {_WANTED} files"))
        elif path.exists():
            files.append(path)
        else:
            missing.append(FilePrediction(path, path.stem, "unreadable",
                                          reason=f"no such file or folder; give image files or folders holding {_WANTED}"))
    files = list(dict.fromkeys(files))  # a file named twice (or inside a folder also named) once
    if not files:
        raise PneumoniaError(f"no image ({_WANTED}) found in {', '.join(map(str, paths))}; give image files or folders")
    return files, missing


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    files: Sequence[Path],
    predictor: Predictor,
    batch_size: int,
    overlays_dir: Path | None = None,
    allow_non_chest: bool = False,
    allow_unlike: bool = False,
    forward: Forward | None = None,
) -> list[FilePrediction]:
    """Answer each file, ``batch_size`` at a time; a file not scored carries its status and reason.

    ``forward`` runs the networks (:func:`load_backend`); by default the predictor's PyTorch modules.
    """
    forward = forward or torch_forward(predictor)
    results: list[FilePrediction] = []
    overlay_names: set[str] = set()
    sizes = (predictor.image_size, OVERLAY_SIZE) if overlays_dir is not None else (predictor.image_size,)
    with tqdm(total=len(files), unit="file", disable=len(files) < PROGRESS_MIN_FILES, desc="predict") as bar:
        for chunk in _chunks(list(files), batch_size):
            images, overlays, infos, readable = [], [], [], []
            for path in chunk:
                try:
                    rendered, info = read_image_sizes(path, sizes, windowing=predictor.windowing)
                except ImageReadError as exc:
                    results.append(FilePrediction(path, path.stem, "unreadable", reason=exc.reason))
                    continue
                problem = None if allow_non_chest else chest_problem(info)
                if problem:
                    results.append(FilePrediction(path, info.patient_id or path.stem, "not_chest",
                                                  reason=f"{problem} (--allow-non-chest scores it anyway)"))
                    continue
                images.append(rendered[0])
                overlays.append(rendered[-1])
                infos.append(info)
                readable.append(len(results))
                results.append(FilePrediction(path, info.patient_id or path.stem, "scored"))
            if images:
                raw = forward(np.stack(images), [(i.rows, i.columns) for i in infos], batch_size)
                found = answers(predictor, raw, allow_unlike)
                for index, answer, info, overlay in zip(readable, found, infos, overlays):
                    results[index] = _result(results[index], answer, info)
                    if overlays_dir is not None and results[index].scored:
                        name = _unique_name(results[index].file.stem, overlay_names)
                        _draw(results[index], overlay, predictor, info, Path(overlays_dir) / f"{name}.png")
            bar.update(len(chunk))
    return results


def _result(pending: FilePrediction, answer: ImageAnswer, info: DicomInfo) -> FilePrediction:
    if answer.refused:
        return FilePrediction(pending.file, pending.patient_id, "unlike_training", answer,
                              f"{answer.refused} (--allow-out-of-distribution scores it anyway)")
    fraction = area_fraction(answer.boxes, info.rows, info.columns) if answer.boxes else None
    mm2 = None if fraction is None else area_mm2(fraction, info)
    notes = [f"scored although {_unlike_line(answer)}"] if answer.unlike else []
    if not info.has_header:
        notes.append(NO_HEADER)
    note = "; ".join(notes)
    return FilePrediction(pending.file, pending.patient_id, "scored", answer, note, fraction, mm2, info)


def area_mm2(fraction: float, info: DicomInfo) -> float | None:
    """``fraction`` of the image in mm², with square pixels of the header's row spacing; None when it is unknown."""
    spacing = info.pixel_spacing_mm
    return None if spacing is None else fraction * info.rows * info.columns * spacing**2


def _unlike_line(answer: ImageAnswer) -> str:
    return answer.why_unlike


def _unique_name(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def caption_notes(prediction: FilePrediction, predictor: Predictor) -> list[str]:
    """The overlay's lines under the probability: the label and its threshold, the boxes' meaning, the caveats."""
    answer = prediction.answer
    label = "pneumonia" if answer.positive else "no pneumonia"
    notes = [f"label: {label} (p >= {predictor.decision.threshold:.3f} is pneumonia); "
             + (f"{len(answer.boxes)} box(es), scores at their corners" if answer.boxes else "no boxes")]
    if answer.unlike:
        notes.append(f"UNLIKE THE TRAINING IMAGES ({answer.why_unlike}): "
                     "do not trust this")
    if predictor.synthetic:
        notes.append("model trained on a synthetic phantom: not a diagnosis")
    return notes


def _draw(prediction: FilePrediction, image: np.ndarray, predictor: Predictor, info: DicomInfo, out: Path) -> None:
    """The image as read at ``OVERLAY_SIZE`` with the boxes and the caption (no truth is known here)."""
    answer = prediction.answer
    draw_overlay(
        image,
        np.zeros(image.shape, np.float32),
        [to_array_pixels(box, info.rows, info.columns, OVERLAY_SIZE) for box in answer.boxes],
        None,
        answer.probability,
        out,
        title=prediction.file.name,
        display_size=OVERLAY_SIZE,
        box_scores=answer.confidences,
        notes=caption_notes(prediction, predictor),
    )


def _fields(prediction: FilePrediction) -> dict[str, str]:
    """The CSV's (and the table's) text for one file: blank, never 0, where there is no value."""
    found = prediction.answer
    row = {k: "" for k in CSV_COLUMNS} | {
        "file": str(prediction.file), "patientId": prediction.patient_id, "status": prediction.status,
        "reason": prediction.reason,
    }
    if found is None:
        return row
    row |= {
        "out_of_distribution": str(int(found.unlike)),
        "ood_distance": f"{found.distance:.1f}",
        "classifier_probability": f"{found.classifier_probability:.4f}",
        "detector_probability": f"{found.detector_probability:.4f}",
    }
    if found.probability is None:
        return row
    return row | {
        "probability": f"{found.probability:.4f}",
        "label": str(int(found.positive)),
        "boxes": ";".join(" ".join(f"{v:.1f}" for v in b) for b in found.boxes),
        "confidences": ";".join(f"{c:.4f}" for c in found.confidences),
        "area_percent": "" if prediction.area_fraction is None else f"{100 * prediction.area_fraction:.2f}",
        "area_mm2": "" if prediction.area_mm2 is None else f"{prediction.area_mm2:.0f}",
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

    Files not scored are left out (the command's exit code says so); a patient without boxes
    (a negative label) gets an empty string.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientId", "PredictionString"])
        for prediction in predictions:
            if not prediction.scored:
                continue
            found = prediction.answer
            ranked = sorted(zip(found.confidences, found.boxes), key=lambda pair: -pair[0])
            text = " ".join(f"{c:.4f} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for c, (x, y, w, h) in ranked)
            writer.writerow([prediction.patient_id, text])


def format_table(predictions: Sequence[FilePrediction], threshold: float) -> str:
    """A plain-text table of the predictions, one line per file: what the CSV and the overlays say."""
    header = ["file", "patientId", "probability", f"label (p>={threshold:.3f})", "boxes (x y w h)", "box scores",
              "area %", "OOD distance"]
    lines = []
    for prediction in predictions:
        f = _fields(prediction)
        if not prediction.scored:
            # A not-chest or unlike reason names itself; an unreadable one (a missing path) may not.
            why = f"unreadable: {prediction.reason}" if prediction.status == "unreadable" else prediction.reason
            lines.append([f["file"], f["patientId"], why, "", "", "", "", ""])
        else:
            flag = " UNLIKE" if prediction.answer.unlike else ""
            lines.append([f["file"], f["patientId"], f["probability"], f["label"], f["boxes"], f["confidences"],
                          f["area_percent"], f["ood_distance"] + flag])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    # A reason is long: let it run past its column rather than widen the whole table.
    widths[2] = max(len(header[2]), max((len(r[2]) for r in lines if r[3]), default=0))
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def summary(predictor: Predictor, predictions: Sequence[FilePrediction]) -> list[str]:
    """The closing lines: counts by status, and what the model was trained on when a person must know it."""
    counts = {status: sum(p.status == status for p in predictions) for status in STATUSES}
    allowed = sum(p.scored and p.answer.unlike for p in predictions)
    parts = [f"{counts['scored']} scored" + (f" ({allowed} although unlike the training images)" if allowed else "")]
    parts += [f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if status != "scored" and n]
    lines = [", ".join(parts)]
    patients = predictor.trained_on.get("patients", {})
    if predictor.synthetic:
        lines.append(f"note: this model was {SYNTHETIC_NOTE} ({patients.get('train', '?')} phantom training images)")
    return lines


@dataclass(frozen=True)
class PredictRun:
    predictor: Predictor
    predictions: list[FilePrediction]
    dicom_skipped: list[tuple[Path, str]]  # scored files without DICOM outputs, and why


def load_backend(model_path: Path, backend: str = "torch") -> tuple[Predictor, Forward]:
    """The predictor and what runs its networks: ``torch``, the model file's PyTorch modules (on the GPU when
    there is one); ``onnxruntime``, ``model_path`` is the folder ``pneumonia export --onnx`` wrote (CPU)."""
    if backend == "onnxruntime":
        from pneumonia.prediction.onnx_backend import load_onnx_predictor

        return load_onnx_predictor(model_path)
    if backend != "torch":
        raise PneumoniaError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    predictor = load_predictor(model_path, default_device())
    return predictor, torch_forward(predictor)


def torch_forward(predictor: Predictor) -> Forward:
    """The predictor's own PyTorch modules (:func:`pneumonia.prediction.predictor.raw_outputs`)."""
    return partial(raw_outputs, predictor.classifier, predictor.detector)


def run(
    paths: Sequence[str | Path],
    model_path: Path = Path("models/pneumonia.safetensors"),
    out_csv: Path | None = Path("predictions.csv"),
    overlays_dir: Path | None = None,
    submission: Path | None = None,
    batch_size: int = 32,
    allow_non_chest: bool = False,
    allow_unlike: bool = False,
    dicom_out: Path | None = None,
    backend: str = "torch",
) -> PredictRun:
    """Predict every DICOM in ``paths``; write the CSV, overlays, submission and DICOM outputs asked for.

    ``backend``: what runs the networks (:func:`load_backend`); with ``onnxruntime``, ``model_path`` is an
    export folder.

    Raises :class:`PneumoniaError` (missing or foreign model file, no DICOM found at all, a ``dicom_out``
    that cannot be written); a path or file that cannot be read is returned as a row with its reason instead.
    """
    files, missing = find_images(paths)
    dicom_outputs = None if dicom_out is None else _dicom_outputs()
    if dicom_outputs is not None:
        dicom_outputs.prepare_output_dir(dicom_out)  # before the models run: a bad folder fails at once
    predictor, forward = load_backend(model_path, backend)
    predictions = missing + predict_files(files, predictor, batch_size, overlays_dir, allow_non_chest, allow_unlike,
                                          forward)
    if out_csv is not None:
        write_predictions_csv(out_csv, predictions)
    if submission is not None:
        write_submission(submission, predictions)
    skipped = []
    if dicom_outputs is not None:
        taken: set[str] = set()  # the overlays' names: assigned to the scored files in the same order
        named = [(_unique_name(p.file.stem, taken), p) for p in predictions if p.scored]
        model = dicom_outputs.ModelIdentity.of(model_path, predictor)
        skipped = dicom_outputs.write_dicom_outputs(dicom_out, named, model)
    return PredictRun(predictor, predictions, skipped)


def _dicom_outputs():
    """The DICOM writer, imported only when asked for: the rest of predict runs without highdicom."""
    try:
        from pneumonia.prediction import dicom_outputs
    except ImportError as exc:
        if exc.name != "highdicom":
            raise
        raise PneumoniaError("--dicom-out needs highdicom, which is not installed; pip install highdicom") from None
    return dicom_outputs
