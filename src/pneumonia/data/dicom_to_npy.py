"""The dicom_to_npy stage: every labelled image (DICOM, PNG or JPEG) into one uint8 array per split.

Each split becomes ``<split>.npy``, an ``N x S x S`` uint8 array (value/255 is
the [0, 1] intensity) that training memory-maps. Worker processes write their
images straight into the preallocated output files, so nothing but file names
and header facts travels between processes and memory stays flat whatever the
dataset size. Everything is built in a temporary folder that replaces
``out_dir`` only when the stage has finished: a killed or failed run leaves no
output that looks complete.

Splits keep a patient's images together and a collection's own val and test
(:func:`pneumonia.data.split.assign_image_splits`). A file that cannot be read, or a DICOM that is not a chest radiograph
(:func:`pneumonia.data.dicom.chest.chest_problem`: Modality not CR/DX/DR, or a
BodyPartExamined that is not a chest), stops the stage (``on_error: fail``) or
is left out and listed in ``failed.csv`` with its reason (``on_error: skip``).
Pixels are rendered with ``windowing`` (see :mod:`pneumonia.data.dicom.rendering`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumonia.core.boxes import to_array_pixels
from pneumonia.data import rsna
from pneumonia.core.atomic import atomic_dir
from pneumonia.data.dicom.chest import NOT_CHEST, check_chest
from pneumonia.data.dicom.header import DicomInfo
from pneumonia.data.images import read_image_sizes
from pneumonia.core.errors import DatasetError, ImageReadError, NotChestError
from pneumonia.reporting.grid import save_grid
from pneumonia.data.manifest import MANIFEST, ManifestRow, write_manifest
from pneumonia.core.params import DicomToNpyParams, SplitParams
from pneumonia.data.split import SPLITS, assign_image_splits

CHUNK = 16  # files per task: large enough to amortise inter-process calls
FAILED = "failed.csv"  # on_error=skip: the files left out, with their reasons


@dataclass(frozen=True)
class ConvertReport:
    counts: dict[str, int]
    image_size: int
    failed: int = 0
    not_chest: int = 0  # of the failed: readable, but not chest radiographs
    splits: str = ""  # how the splits were made (assign_image_splits' line)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        text = f"converted {sum(self.counts.values())} images to {self.image_size}x{self.image_size} ({parts}; {self.splits})"
        if self.failed:
            text += f"; {self.failed} failed and were skipped (listed in {FAILED})"
        if self.not_chest:
            text += f", {self.not_chest} of them not chest radiographs"
        return text


@dataclass(frozen=True)
class _Task:
    path: str
    split: str
    row: int  # in the preallocated array, before any skipped file is dropped


def run(
    raw_dir: Path,
    out_dir: Path,
    params: DicomToNpyParams,
    split: SplitParams,
    grid_path: Path | None = None,
    seed: int = 0,
) -> ConvertReport:
    """Convert ``raw_dir`` (RSNA layout, or a collection's normalised form) into ``out_dir``; optionally draw a sample grid.

    ``params.on_error`` decides what a file that cannot be read does: ``fail``
    stops with its name, ``skip`` leaves it out and lists it in ``failed.csv``.
    """
    # Fork the workers first, while this process is small: forked pages count in
    # every worker's resident memory, so nothing that grows with the dataset is shared.
    with _worker_pool(params.workers) as pool:
        patients = rsna.read_patients(raw_dir)
        entries = rsna.read_index(raw_dir, patients)
        splits, how = assign_image_splits([p.target for p in patients], [e.patient for e in entries],
                                          [e.split for e in entries], split)
        size = params.image_size
        rows_in_split = {name: 0 for name in SPLITS}
        tasks = []
        for entry, name in zip(entries, splits):
            tasks.append(_Task(str(raw_dir / rsna.IMAGES_DIR / entry.file), name, rows_in_split[name]))
            rows_in_split[name] += 1

        with atomic_dir(out_dir) as tmp:
            for name in SPLITS:
                np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(rows_in_split[name], size, size))
            results = _convert_all(pool, tasks, tmp, size, params.on_error == "skip", params.windowing)
            failed = [(p, t, r) for p, t, r in zip(patients, tasks, results) if isinstance(r, str)]
            if len(failed) == len(tasks):
                raise DatasetError(f"{raw_dir}: none of the {len(tasks)} images could be read (the first: {failed[0][1].path}: {failed[0][2]})")
            if failed:
                _drop_rows(tmp, [t for _, t, _ in failed])
            _write_failed(tmp / FAILED, [(p.patient_id, t.path, reason) for p, t, reason in failed])
            manifest, new_rows = _manifest(patients, tasks, results)
            write_manifest(tmp / MANIFEST, manifest)
            if grid_path is not None:
                _save_samples(grid_path, tmp, manifest, params.grid_images, seed)
    not_chest = sum(reason.startswith(NOT_CHEST) for _, _, reason in failed)
    return ConvertReport(counts=new_rows, image_size=size, failed=len(failed), not_chest=not_chest, splits=how)


def _manifest(patients: list, tasks: list[_Task], results: list) -> tuple[list[ManifestRow], dict[str, int]]:
    """One row per converted patient, numbered within its split as the arrays hold them (failures left out)."""
    manifest, new_rows = [], {name: 0 for name in SPLITS}
    for p, task, info in zip(patients, tasks, results):
        if isinstance(info, str):
            continue
        manifest.append(
            ManifestRow(
                patient_id=p.patient_id,
                split=task.split,
                row=new_rows[task.split],
                label=p.target,
                boxes=p.boxes,
                detailed_class=p.detailed_class,
                view=info.view,
                sex=info.sex,
                age=info.age,
                rows=info.rows,
                columns=info.columns,
                pixel_spacing_mm=info.pixel_spacing_mm,
                pixel_spacing_note=info.pixel_spacing_note,
            )
        )
        new_rows[task.split] += 1
    return manifest, new_rows


def _worker_pool(workers: int):
    """A pool of ``workers`` processes (0: one per core); no pool (None) for one."""
    workers = workers or os.cpu_count() or 1
    # fork shares the already imported modules with the workers.
    return get_context("fork").Pool(workers) if workers > 1 else contextlib.nullcontext()


def _convert_all(
    pool, tasks: list[_Task], out_dir: Path, size: int, skip: bool, windowing: str
) -> list[DicomInfo | str]:
    """Convert every task, in parallel when there is a pool; per task its header facts or, skipped, the reason."""
    chunks = [(tasks[i : i + CHUNK], str(out_dir), size, skip, windowing) for i in range(0, len(tasks), CHUNK)]
    results: list[DicomInfo | str] = []
    # The context closes the bar before an error propagates, so the error starts its own line.
    with tqdm(total=len(tasks), desc="dicom_to_npy", unit="img") as progress:
        for result in pool.imap(_convert_chunk_star, chunks) if pool else map(_convert_chunk_star, chunks):
            results.extend(result)
            progress.update(len(result))
    return results


def _convert_chunk_star(args) -> list[DicomInfo | str]:
    return _convert_chunk(*args)


def _convert_chunk(chunk: list[_Task], out_dir: str, size: int, skip: bool, windowing: str) -> list[DicomInfo | str]:
    """Convert a few files, writing each image at its row of ``<out_dir>/<split>.npy``.

    Rows are written with ``pwrite`` into the preallocated array file rather than
    through a memory map: written pages go to the page cache instead of staying
    resident in the worker, so memory does not grow with the dataset.
    """
    results: list[DicomInfo | str] = []
    files: dict[str, tuple[int, int]] = {}  # split -> (descriptor, data offset)
    try:
        for task in chunk:
            if task.split not in files:
                array_path = f"{out_dir}/{task.split}.npy"
                files[task.split] = (os.open(array_path, os.O_WRONLY), _data_offset(array_path))
            try:
                (image,), info = read_image_sizes(task.path, (size,), windowing=windowing)
                if info.has_header:  # a PNG or JPEG cannot say what it shows
                    check_chest(task.path, info)
            except ImageReadError as exc:
                if skip:
                    results.append(exc.reason)
                    continue
                if isinstance(exc, NotChestError):
                    raise DatasetError(
                        f"{exc}; this pipeline trains on chest X-rays: remove the file from the dataset, or set "
                        f"dicom_to_npy.on_error: skip to leave it out (listed in {FAILED})"
                    ) from None
                raise
            fd, offset = files[task.split]
            os.pwrite(fd, np.ascontiguousarray(image).tobytes(), offset + task.row * size * size)
            results.append(info)
    finally:
        for fd, _ in files.values():
            os.close(fd)
    return results


def _drop_rows(out_dir: Path, failed: list[_Task]) -> None:
    """Rewrite each split array without the rows of the files that failed, a block at a time."""
    for name in SPLITS:
        drop = {t.row for t in failed if t.split == name}
        if not drop:
            continue
        old = np.load(out_dir / f"{name}.npy", mmap_mode="r")
        keep = [i for i in range(len(old)) if i not in drop]
        new_path = out_dir / f".{name}.compact.npy"
        new = np.lib.format.open_memmap(new_path, mode="w+", dtype=np.uint8, shape=(len(keep), *old.shape[1:]))
        for start in range(0, len(keep), 256):
            rows = keep[start : start + 256]
            new[start : start + len(rows)] = old[rows]
        new.flush()
        del old, new
        os.replace(new_path, out_dir / f"{name}.npy")


def _write_failed(path: Path, failed: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "path", "reason"])
        writer.writerows(failed)


def _data_offset(array_path: str) -> int:
    """Where the array data starts in a .npy file (after its header)."""
    return np.load(array_path, mmap_mode="r").offset


def _save_samples(path: Path, processed: Path, manifest: list[ManifestRow], n: int, seed: int) -> None:
    """A seeded sample of train images with their label and boxes (scaled to the array size)."""
    train = [r for r in manifest if r.split == "train"]
    sample = random.Random(seed).sample(train, min(n, len(train)))
    array = np.load(processed / "train.npy", mmap_mode="r")
    size = array.shape[1]
    save_grid(
        path,
        images=[np.array(array[r.row]) for r in sample],
        captions=[f"{r.label} {r.detailed_class.replace('No Lung Opacity / ', '')}" for r in sample],
        boxes=[[to_array_pixels(box, r.rows, r.columns, size) for box in r.boxes] for r in sample],
    )

