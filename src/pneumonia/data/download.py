"""The ``download`` stage's library: put the RSNA dataset into ``data/raw``.

Five sources (``download.source``): ``synthetic`` generates an offline phantom,
``kaggle`` downloads the competition archive, ``local`` takes a zip or folder
already on disk in the RSNA layout, ``folder`` and ``table`` take any labelled
collection (class folders or a CSV table; DICOM, PNG or JPEG;
:mod:`~pneumonia.data.collection`), written in the same normalised form. The RSNA sources end in the same step, :func:`install`: copy only
what the pipeline reads (the two label CSVs and ``stage_2_train_images/*.dcm`` of
labelled patients) into a temporary folder, validate it, and only then rename it
onto ``raw_dir``. A failure therefore never leaves a half-written ``raw_dir`` and
keeps a previous one intact.

The sources' own code: :mod:`~pneumonia.data.phantom`, :mod:`~pneumonia.data.kaggle_source`
(credentials and the download), :mod:`~pneumonia.data.rsna_layout` (a folder or a zip, read safely).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pneumonia.core.atomic import atomic_dir
from pneumonia.core.errors import DatasetError, PneumoniaError
from pneumonia.core.params import DownloadParams
from pneumonia.data import rsna
from pneumonia.data.collection import SKIPPED_TXT, folder_collection, install_collection, table_collection
from pneumonia.data.kaggle_source import check_kaggle_credentials, download_from_kaggle
from pneumonia.data.phantom.dataset import generate
from pneumonia.data.rsna_layout import Layout, open_layout

UNLABELLED_TXT = "unlabelled_dicoms.txt"


@dataclass(frozen=True)
class DownloadReport:
    """What :func:`run` put into ``raw_dir``."""

    source: str  # synthetic | kaggle | local | folder | table
    patients: int  # labelled images (RSNA: one per patient)
    positives: int  # images with Target=1
    images: int  # image files kept in stage_2_train_images/
    unlabelled: tuple[str, ...]  # patientIds of DICOMs without a label row, left out
    skipped: int = 0  # folder: files and folders left out, listed in skipped.txt
    with_boxes: int = -1  # positives with at least one box (-1: not counted, RSNA's layout has a box per positive)

    def summary(self) -> str:
        """One line for the stage to print."""
        line = (
            f"download ({self.source}): {self.patients} patients, {self.positives} positive, "
            f"{self.images} images"
        )
        if self.unlabelled:
            line += f"; {len(self.unlabelled)} DICOM(s) without labels ignored (listed in {UNLABELLED_TXT})"
        if self.with_boxes == 0:
            line += "; no boxes: the detector's stages will say so and the decision is the classifier's"
        elif self.with_boxes > 0:
            line += f"; {self.with_boxes} positives with boxes"
        if self.skipped:
            line += f"; {self.skipped} file(s) or folder(s) left out (listed in {SKIPPED_TXT})"
        return line


def run(params: DownloadParams, seed: int, raw_dir: Path = Path("data/raw")) -> DownloadReport:
    """Fetch the dataset from ``params.source`` into ``raw_dir`` (replaced only on success).

    ``seed`` seeds the synthetic phantom; the other sources ignore it.
    """
    raw_dir = Path(raw_dir)
    if params.source == "local":
        source_path = Path(params.path or "")
        if not source_path.exists():
            raise DatasetError(
                f"download.path {source_path}: does not exist; point it at a zip or folder in the RSNA layout"
            )
        return install(source_path, raw_dir, source="local")

    if params.source == "synthetic":
        with _scratch_dir(raw_dir) as scratch:
            generated = scratch / "phantom"
            generate(generated, patients=params.phantom.patients, size=params.phantom.size, seed=seed)
            return install(generated, raw_dir, source="synthetic")

    if params.source == "kaggle":
        check_kaggle_credentials(params.competition)
        # The archive lives in the scratch folder, so it is deleted with it, success or not.
        with _scratch_dir(raw_dir) as scratch:
            archive = download_from_kaggle(params.competition, scratch)
            return install(archive, raw_dir, source="kaggle")

    if params.source in ("folder", "table"):
        root = Path(params.path)
        if not root.is_dir():
            raise DatasetError(f"download.path {root}: is not a folder; point it at the folder holding the "
                               + ("class folders" if params.source == "folder" else f"table {params.table} and its images"))
        if params.source == "folder":
            found = folder_collection(root, params.classes, params.patient_pattern)
        else:
            found = table_collection(root, params.table, params.classes, params.patient_pattern)
        install_collection(found, raw_dir)
        positives = [image for image in found.images if image.label]
        return DownloadReport(source=params.source, patients=len(found.images), positives=len(positives),
                              images=len(found.images), unlabelled=(), skipped=len(found.skipped),
                              with_boxes=sum(bool(image.boxes) for image in positives))

    raise PneumoniaError(f"params.yaml: download.source {params.source!r} is unknown; use synthetic, kaggle, local, "
                         "folder or table")


def install(source_path: Path, raw_dir: Path, source: str) -> DownloadReport:
    """Copy the RSNA files the pipeline needs from a zip or folder into ``raw_dir``, validated.

    The zip may hold the files at its root or inside one top-level folder. Labelled
    patients without an image are an error; images without labels are left out and
    listed in ``raw_dir/unlabelled_dicoms.txt``. ``source`` only labels the report.
    """
    source_path = Path(source_path)
    # Only files this stage generated itself may be hard-linked: a user's own files could
    # otherwise share an inode with the DVC cache, which makes cached files read-only.
    with open_layout(source_path, link=source == "synthetic") as layout, atomic_dir(raw_dir) as staging:
        return _assemble(layout, staging, source)


def _assemble(layout: Layout, staging: Path, source: str) -> DownloadReport:
    """Copy the CSVs, validate them against the images, then copy the labelled images."""
    for name in (rsna.LABELS_CSV, rsna.CLASSES_CSV):
        if not layout.has(name):
            raise DatasetError(
                f"{layout.description}: {name} is missing; the RSNA layout needs {rsna.LABELS_CSV}, "
                f"{rsna.CLASSES_CSV} and {rsna.IMAGES_DIR}/"
            )
        layout.place(name, staging / name)

    patients = rsna.read_patients(staging, shown_as=layout.description)
    if not patients:
        raise DatasetError(
            f"{layout.description}: {rsna.LABELS_CSV} has no patients; use the full label file"
        )

    image_ids = layout.image_ids()
    missing = [p.patient_id for p in patients if p.patient_id not in image_ids]
    if missing:
        raise DatasetError(
            f"{layout.description}: {len(missing)} of {len(patients)} labelled patients have no "
            f"{rsna.IMAGES_DIR}/<patientId>.dcm (first: {', '.join(missing[:5])}); add the images "
            "or use the label files that match them"
        )
    labelled = {p.patient_id for p in patients}
    unlabelled = tuple(sorted(image_ids - labelled))

    images = staging / rsna.IMAGES_DIR
    images.mkdir()
    for patient in patients:
        file_name = f"{patient.patient_id}.dcm"
        layout.place(f"{rsna.IMAGES_DIR}/{file_name}", images / file_name)
    if unlabelled:
        (staging / UNLABELLED_TXT).write_text("".join(f"{pid}\n" for pid in unlabelled))

    return DownloadReport(
        source=source,
        patients=len(patients),
        positives=sum(p.target for p in patients),
        images=len(patients),
        unlabelled=unlabelled,
    )


@contextlib.contextmanager
def _scratch_dir(raw_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``raw_dir`` (same file system, so files can be linked cheaply)."""
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{raw_dir.name}.download-", dir=raw_dir.parent) as scratch:
        yield Path(scratch)
