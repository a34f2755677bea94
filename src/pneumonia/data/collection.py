"""Labelled collections other than RSNA's: class folders (``folder``) and a CSV table (``table``).

Both become the one normalised form every later stage reads (:mod:`pneumonia.data.rsna`): RSNA's two
label files, the images under ``stage_2_train_images/`` (DICOM, PNG or JPEG, by their own ending), and
``images.csv`` giving each image its file, its patient and the collection's own split, if it has one.

- ``folder``: ``<path>/<CLASS>/...`` or ``<path>/<split>/<CLASS>/...`` (split ``train``, ``val`` or
  ``test``, any case), class folder names mapped to labels by ``download.classes``; Kaggle's
  "Chest X-Ray Images (Pneumonia)" is ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``. One wrapper
  folder around it (an unzipped archive's) is looked through.
- ``table``: a CSV inside ``<path>`` (``download.table``) with the columns ``image`` (a path relative to
  ``<path>``) and ``label`` (0, 1 or a name of ``download.classes``), and optionally ``patient``,
  ``split`` and a box per row as RSNA's (``x, y, width, height`` in the image's pixels; one row per box).

An image's id (its RSNA ``patientId``) is its path under ``<path>`` without the ending, ``/`` written
``__``: unique, and it says where the image came from. Its patient is the table's ``patient``, else the
first group of ``download.patient_pattern`` matched on the file name, else the image itself. Files that
are not images, and folders that are no class of ``download.classes``, are left out and listed in
``skipped.txt``: nothing is lost silently.
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from pneumonia.core.atomic import atomic_dir
from pneumonia.core.errors import DatasetError
from pneumonia.data import rsna
from pneumonia.data.split import SPLITS

SKIPPED_TXT = "skipped.txt"
_IGNORED_FOLDERS = ("__MACOSX",)  # macOS's resource forks in zips; never images


@dataclass(frozen=True)
class CollectionImage:
    path: Path  # the file in the collection
    image_id: str
    label: int
    detailed_class: str  # the class folder's name or the table's label text
    patient: str
    split: str  # the collection's own split, "" when it has none
    boxes: tuple[rsna.Box, ...] = ()


@dataclass(frozen=True)
class Collection:
    images: list[CollectionImage]
    skipped: list[str]  # "<path>: <why>" for each file or folder left out


def folder_collection(root: Path, classes: dict[str, int], patient_pattern: str | None) -> Collection:
    """Every image under ``root``'s class folders (optionally inside split folders), in sorted path order."""
    root = _look_through_wrapper(Path(root), classes)
    by_name = {name.lower(): name for name in classes}
    images, skipped = [], []
    top = _subfolders(root)
    split_folders = [f for f in top if f.name.lower() in SPLITS]
    if split_folders:
        skipped += [f"{f}: not a split folder ({', '.join(SPLITS)}); left out" for f in top if f not in split_folders]
        sources = [(f, f.name.lower()) for f in split_folders]
    else:
        sources = [(root, "")]
    for folder, split in sources:
        for class_folder in _subfolders(folder):
            name = by_name.get(class_folder.name.lower())
            if name is None:
                skipped.append(f"{class_folder}: not a class of download.classes ({', '.join(classes)}); left out")
                continue
            for path in sorted(p for p in class_folder.rglob("*") if p.is_file()):
                if path.suffix.lower() not in rsna.IMAGE_SUFFIXES:
                    skipped.append(f"{path}: not an image file ({', '.join(rsna.IMAGE_SUFFIXES)}); left out")
                    continue
                image_id = _image_id(path.relative_to(root))
                patient = _patient(path, patient_pattern, image_id)
                images.append(CollectionImage(path, image_id, classes[name], name, patient, split))
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            skipped.append(f"{path}: not inside a class folder; left out")
    if not images:
        raise DatasetError(f"{root}: no image (*.dcm, *.png, *.jpg) in class folders named {', '.join(classes)} "
                           f"(optionally inside train/, val/, test/); set download.classes to the folder names")
    return Collection(images, skipped)


def table_collection(root: Path, table: str, classes: dict[str, int], patient_pattern: str | None) -> Collection:
    """The images a CSV table inside ``root`` lists, in its row order; one row per box, as RSNA's."""
    path = Path(root) / table
    labels = {name.lower(): value for name, value in classes.items()} | {"0": 0, "1": 1}
    found: dict[str, CollectionImage] = {}
    for number, row in _table_rows(path):
        where = f"{path} row {number}"
        file = Path(root) / row["image"]
        if not row["image"] or PurePosixPath(row["image"].replace("\\", "/")).is_absolute() or ".." in Path(row["image"]).parts:
            raise DatasetError(f"{where}: image {row['image']!r} must be a path inside {root}, relative to it")
        if file.suffix.lower() not in rsna.IMAGE_SUFFIXES:
            raise DatasetError(f"{where}: {row['image']} is not an image file ({', '.join(rsna.IMAGE_SUFFIXES)})")
        if not file.is_file():
            raise DatasetError(f"{where}: {file} does not exist; fix the path (relative to {root}) or remove the row")
        label = labels.get(row["label"].strip().lower())
        if label is None:
            raise DatasetError(f"{where}: label {row['label']!r} is neither 0, 1 nor a class of download.classes "
                               f"({', '.join(classes)}); fix it or add it to download.classes")
        split = row.get("split", "").strip().lower()
        if split and split not in SPLITS:
            raise DatasetError(f"{where}: split {row['split']!r} must be train, val, test or empty")
        image_id = _image_id(Path(row["image"]))
        patient = row.get("patient", "").strip() or _patient(file, patient_pattern, image_id)
        box = _table_box(row, label, where)
        image = CollectionImage(file, image_id, label, row["label"].strip(), patient, split)
        previous = found.setdefault(image_id, image)
        if (previous.label, previous.patient, previous.split) != (image.label, image.patient, image.split):
            raise DatasetError(f"{where}: {row['image']} has another label, patient or split than on an earlier row; "
                               "make every row of an image agree")
        if box:
            found[image_id] = replace(previous, boxes=previous.boxes + (box,))
    if not found:
        raise DatasetError(f"{path}: lists no image; add rows (image,label[,patient][,split][,x,y,width,height])")
    return Collection(list(found.values()), [])


def install_collection(collection: Collection, raw_dir: Path) -> None:
    """Write ``collection`` into ``raw_dir`` in the normalised form, swapped in only when complete."""
    with atomic_dir(raw_dir) as staging:
        images_dir = staging / rsna.IMAGES_DIR
        images_dir.mkdir()
        labels, classes, index = [], [], []
        for image in collection.images:
            file_name = image.image_id + image.path.suffix.lower()
            # A copy, never a link: a user's file sharing an inode with DVC's cache would be made read-only.
            shutil.copyfile(image.path, images_dir / file_name)
            boxes = image.boxes or (None,)
            labels += [[image.image_id, *(box or ("", "", "", "")), image.label] for box in boxes]
            classes.append([image.image_id, image.detailed_class])
            index.append([image.image_id, file_name, image.patient, image.split])
        _write_csv(staging / rsna.LABELS_CSV, rsna.LABEL_COLUMNS, labels)
        _write_csv(staging / rsna.CLASSES_CSV, rsna.CLASS_COLUMNS, classes)
        _write_csv(staging / rsna.INDEX_CSV, rsna.INDEX_COLUMNS, index)
        if collection.skipped:
            (staging / SKIPPED_TXT).write_text("".join(f"{line}\n" for line in collection.skipped))


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in _IGNORED_FOLDERS)


def _look_through_wrapper(root: Path, classes: dict[str, int]) -> Path:
    """``root``, or its one subfolder when ``root`` holds nothing but that (an unzipped archive's folder)."""
    if not root.is_dir():
        raise DatasetError(f"download.path {root}: not a folder; give the folder holding the class folders "
                           "(unzip an archive first)")
    known = {name.lower() for name in classes} | set(SPLITS)
    subfolders = _subfolders(root)
    if len(subfolders) == 1 and subfolders[0].name.lower() not in known and not any(
            p.is_file() for p in root.iterdir() if not p.name.startswith(".")):
        return subfolders[0]
    return root


def _image_id(relative: Path) -> str:
    """A plain file name that says where the image came from: ``train/NORMAL/a.jpeg`` -> ``train__NORMAL__a``."""
    return "__".join(relative.with_suffix("").parts)


def _patient(path: Path, pattern: str | None, image_id: str) -> str:
    if pattern is None:
        return image_id
    match = re.match(pattern, path.stem)
    if match is None:
        raise DatasetError(f"{path}: its name does not match download.patient_pattern {pattern!r}; fix the pattern, "
                           "or set it to null (each image its own patient)")
    return match.group(1) if match.groups() else match.group(0)


def _table_rows(path: Path):
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in ("image", "label") if name not in header]
            if missing:
                raise DatasetError(f"{path}: header lacks column(s) {', '.join(missing)}; it must contain image,label "
                                   "and may contain patient, split and x,y,width,height")
            reader.fieldnames = header
            for row in reader:
                if any((value or "").strip() for value in row.values()):
                    yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found; set download.table to the CSV's path inside download.path") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as UTF-8 comma-separated CSV") from None


def _table_box(row: dict[str, str], label: int, where: str) -> rsna.Box | None:
    coordinates = [row.get(column, "") for column in rsna.BOX_COLUMNS]
    if not any(coordinates):
        return None
    if label != 1:
        raise DatasetError(f"{where}: a box on a negative image; leave x,y,width,height empty or set label 1")
    return rsna.parse_box(coordinates, where)
