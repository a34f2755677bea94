"""The RSNA Pneumonia Detection Challenge label files.

``stage_2_train_labels.csv`` has one row per box: ``patientId,x,y,width,height,Target``.
A positive patient (``Target=1``) has one row per opacity box; a negative one has a
single row with empty coordinates. Boxes are ``x, y, width, height`` in pixels of
the original image (1024×1024 in RSNA), origin at the top-left corner.
``stage_2_detailed_class_info.csv`` gives each patient's ``class``
("Lung Opacity", "Normal", "No Lung Opacity / Not Normal").

A positive patient whose coordinates are all empty has no box: a collection that labels images, not
regions (:mod:`pneumonia.data.collection`), is written so.

``images.csv`` (optional; every collection but RSNA's own has it) names each patient's image file under
``stage_2_train_images/`` (a DICOM, PNG or JPEG), the patient it belongs to (several images may share
one) and the collection's own split (train, val, test, or empty). Without it, as in RSNA's archive, the
file is ``<patientId>.dcm``, each image is its own patient and no split is given.

Row numbers in error messages count the header as row 1, as a spreadsheet does.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pneumonia.core.errors import DatasetError

LABELS_CSV = "stage_2_train_labels.csv"
CLASSES_CSV = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
INDEX_CSV = "images.csv"
IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")
"""The image files a collection may hold (any case): DICOM, PNG, JPEG."""

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_COLUMNS = ("x", "y", "width", "height")
INDEX_COLUMNS = ("patientId", "file", "patient", "split")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Patient:
    """One patient (one image) of the labels file."""

    patient_id: str
    target: int  # 1 if any row of the patient has Target=1
    boxes: tuple[Box, ...]  # (x, y, width, height) in pixels of the original image, file order
    detailed_class: str  # from the class file; "" when that file is not given


def read_patients(raw_dir: Path, *, shown_as: str | None = None) -> list[Patient]:
    """Read the labels (and, when present, the class file) under ``raw_dir``.

    Patients are deduplicated by patientId, in order of first appearance in the
    labels file. ``shown_as`` is how error messages name ``raw_dir`` (for example
    the archive the files came from); it defaults to ``raw_dir`` itself.
    Raises :class:`DatasetError` on any malformed file, naming the file and row.
    """
    raw_dir = Path(raw_dir)
    where = shown_as if shown_as is not None else str(raw_dir)
    labels_name = f"{where.rstrip('/')}/{LABELS_CSV}"
    classes_name = f"{where.rstrip('/')}/{CLASSES_CSV}"

    patients = _read_labels(raw_dir / LABELS_CSV, labels_name)
    classes_path = raw_dir / CLASSES_CSV
    if not classes_path.is_file():
        return [Patient(pid, target, tuple(boxes), "") for pid, (target, boxes) in patients.items()]

    classes = _read_classes(classes_path, classes_name)
    missing = [pid for pid in patients if pid not in classes]
    if missing:
        raise DatasetError(
            f"{classes_name}: {len(missing)} patient(s) of {LABELS_CSV} have no class row "
            f"(first: {', '.join(missing[:5])}); add their rows or use the class file that came with the labels"
        )
    return [Patient(pid, target, tuple(boxes), classes[pid]) for pid, (target, boxes) in patients.items()]


def _read_labels(path: Path, name: str) -> dict[str, tuple[int, list[Box]]]:
    """patientId -> (target, boxes), in order of first appearance (dicts keep insertion order)."""
    patients: dict[str, tuple[int, list[Box]]] = {}
    first_row: dict[str, int] = {}
    for row_number, row in _read_rows(path, name, LABEL_COLUMNS):
        pid = _patient_id(row["patientId"], name, row_number)
        target_text = row["Target"]
        if target_text not in ("0", "1"):
            raise DatasetError(f"{name} row {row_number}: Target is {target_text!r}; it must be 0 or 1")
        target = int(target_text)
        coordinates = [row[column] for column in BOX_COLUMNS]

        box: Box | None = None
        if target == 1 and any(coordinates):
            box = parse_box(coordinates, f"{name} row {row_number}")
        elif any(coordinates):
            raise DatasetError(
                f"{name} row {row_number}: Target is 0 but x,y,width,height are filled in; "
                "leave them empty for a negative row or set Target to 1"
            )

        if pid not in patients:
            patients[pid] = (target, [])
            first_row[pid] = row_number
        elif patients[pid][0] != target:
            raise DatasetError(
                f"{name} row {row_number}: patient {pid} has Target={target} here but "
                f"Target={patients[pid][0]} on row {first_row[pid]}; make all rows of a patient agree"
            )
        if box is not None:
            patients[pid][1].append(box)
    return patients


def _read_classes(path: Path, name: str) -> dict[str, str]:
    """patientId -> detailed class; a patient may repeat (one row per box) but must keep one class."""
    classes: dict[str, str] = {}
    for row_number, row in _read_rows(path, name, CLASS_COLUMNS):
        pid = _patient_id(row["patientId"], name, row_number)
        detailed_class = row["class"]
        if classes.get(pid, detailed_class) != detailed_class:
            raise DatasetError(
                f"{name} row {row_number}: patient {pid} has class {detailed_class!r} here but "
                f"{classes[pid]!r} on an earlier row; give each patient one class"
            )
        classes[pid] = detailed_class
    return classes


def _read_rows(path: Path, name: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, {column: stripped value}) for the ``required`` columns of a CSV.

    utf-8-sig drops a byte-order mark (Excel writes one); newline="" lets the csv
    module handle CRLF line ends itself.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [column.strip() for column in next(reader, [])]
            missing = [column for column in required if column not in header]
            if missing:
                if len(header) == 1 and ";" in header[0]:
                    raise DatasetError(
                        f"{name}: looks semicolon-separated (a spreadsheet export); "
                        "save it as comma-separated CSV"
                    )
                raise DatasetError(
                    f"{name}: header lacks column(s) {', '.join(missing)}; "
                    f"it must contain {','.join(required)}"
                )
            index = {column: header.index(column) for column in required}
            for row in reader:
                if not any(value.strip() for value in row):
                    continue  # blank lines, e.g. a trailing one, carry no data
                if len(row) < len(header):
                    raise DatasetError(
                        f"{name} row {reader.line_num}: has {len(row)} fields, the header has "
                        f"{len(header)}; fix the row"
                    )
                yield reader.line_num, {column: row[i].strip() for column, i in index.items()}
    except FileNotFoundError:
        raise DatasetError(f"{name}: not found; the RSNA layout needs it next to {IMAGES_DIR}/") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: not UTF-8 text; save it as UTF-8 comma-separated CSV") from None
    except csv.Error as exc:
        raise DatasetError(f"{name}: not a readable CSV ({exc}); save it as comma-separated CSV") from None


def _patient_id(text: str, name: str, row_number: int) -> str:
    """The patientId of a row; it becomes a file name, so it must not be able to leave the folder."""
    if not text:
        raise DatasetError(f"{name} row {row_number}: patientId is empty; fill it in or delete the row")
    if "/" in text or "\\" in text or ".." in text or "\0" in text:
        raise DatasetError(
            f"{name} row {row_number}: patientId {text!r} contains a path separator or '..'; "
            "a patientId must be a plain file name"
        )
    return text


def parse_box(coordinates: list[str], where: str) -> Box:
    """Parse x, y, width, height (pixels) of a positive row; ``where`` names the file and row."""
    try:
        x, y, width, height = (float(value) for value in coordinates)
    except ValueError:
        raise DatasetError(
            f"{where}: x,y,width,height are {','.join(coordinates)!r}; "
            "a box needs four numbers (pixels), or leave all four empty for a positive without a box"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, width, height)) or width <= 0 or height <= 0:
        raise DatasetError(
            f"{where}: box {','.join(coordinates)} is not a finite box with "
            "positive width and height; fix the coordinates (pixels)"
        )
    return (x, y, width, height)


@dataclass(frozen=True)
class ImageEntry:
    """Where a patient's image is and whom it belongs to (``images.csv``, or RSNA's defaults)."""

    file: str  # under IMAGES_DIR
    patient: str  # the patient it belongs to: a split never separates two images of one patient
    split: str  # the collection's own split, "" when it gives none


def read_index(raw_dir: Path, patients: list[Patient]) -> list[ImageEntry]:
    """Each patient's :class:`ImageEntry`, in the order of ``patients``."""
    path = Path(raw_dir) / INDEX_CSV
    if not path.is_file():
        return [ImageEntry(f"{p.patient_id}.dcm", p.patient_id, "") for p in patients]
    entries: dict[str, ImageEntry] = {}
    for row_number, row in _read_rows(path, str(path), INDEX_COLUMNS):
        pid = _patient_id(row["patientId"], str(path), row_number)
        file = _patient_id(row["file"], str(path), row_number)
        if row["split"] not in ("", "train", "val", "test"):
            raise DatasetError(f"{path} row {row_number}: split {row['split']!r} must be train, val, test or empty")
        entries[pid] = ImageEntry(file, row["patient"] or pid, row["split"])
    missing = [p.patient_id for p in patients if p.patient_id not in entries]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} labelled image(s) have no row (first: {', '.join(missing[:5])}); "
                           "run the download stage again")
    return [entries[p.patient_id] for p in patients]
