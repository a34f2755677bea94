"""The dicom_to_npy stage: every labelled DICOM into one uint8 array per split.

Each split becomes ``<split>.npy``, an ``N x S x S`` uint8 array (value/255 is
the [0, 1] intensity) that training memory-maps. Worker processes write their
images straight into the preallocated output files, so nothing but file names
and header facts travels between processes and memory stays flat whatever the
dataset size. Everything is built in a temporary folder that replaces
``out_dir`` only when every file has been converted.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumonia import rsna
from pneumonia.atomic import atomic_dir
from pneumonia.dicom import DicomInfo, read_dicom
from pneumonia.grid import save_grid
from pneumonia.manifest import MANIFEST, ManifestRow, write_manifest
from pneumonia.params import DicomToNpyParams, SplitParams
from pneumonia.split import SPLITS, assign_splits

CHUNK = 16  # files per task: large enough to amortise inter-process calls


@dataclass(frozen=True)
class ConvertReport:
    counts: dict[str, int]
    image_size: int

    def summary(self) -> str:
        parts = ", ".join(f"{n} {split}" for split, n in self.counts.items())
        return f"converted {sum(self.counts.values())} DICOMs to {self.image_size}x{self.image_size} ({parts})"


def run(
    raw_dir: Path,
    out_dir: Path,
    params: DicomToNpyParams,
    split: SplitParams,
    grid_path: Path | None = None,
    seed: int = 0,
) -> ConvertReport:
    """Convert ``raw_dir`` (RSNA layout) into ``out_dir``; optionally draw a sample grid."""
    patients = rsna.read_patients(raw_dir)
    splits = assign_splits([p.target for p in patients], split)
    size = params.image_size
    counts = {name: splits.count(name) for name in SPLITS}

    rows_in_split = {name: 0 for name in SPLITS}
    tasks = []
    for patient, name in zip(patients, splits):
        tasks.append((str(raw_dir / rsna.IMAGES_DIR / f"{patient.patient_id}.dcm"), name, rows_in_split[name]))
        rows_in_split[name] += 1

    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(counts[name], size, size))
        infos = _convert_all(tasks, tmp, size, params.workers)
        manifest = [
            ManifestRow(
                patient_id=p.patient_id,
                split=name,
                row=row,
                label=p.target,
                boxes=p.boxes,
                detailed_class=p.detailed_class,
                view=info.view,
                sex=info.sex,
                age=info.age,
                rows=info.rows,
                columns=info.columns,
                pixel_spacing_mm=info.pixel_spacing_mm,
            )
            for p, (_, name, row), info in zip(patients, tasks, infos)
        ]
        write_manifest(tmp / MANIFEST, manifest)
        if grid_path is not None:
            _save_samples(grid_path, tmp, manifest, params.grid_images, seed)
    return ConvertReport(counts=counts, image_size=size)


def _convert_all(tasks: list[tuple[str, str, int]], out_dir: Path, size: int, workers: int) -> list[DicomInfo]:
    """Convert every task, in parallel, returning header facts in task order."""
    workers = workers or os.cpu_count() or 1
    chunks = [tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)]
    infos: list[DicomInfo] = []
    # The context closes the bar before an error propagates, so the error starts its own line.
    with tqdm(total=len(tasks), desc="dicom_to_npy", unit="img") as progress:
        if workers == 1:
            for chunk in chunks:
                infos.extend(_convert_chunk(chunk, str(out_dir), size))
                progress.update(len(chunk))
        else:
            # fork shares the already imported modules with the workers.
            with get_context("fork").Pool(workers) as pool:
                for result in pool.imap(_convert_chunk_star, [(c, str(out_dir), size) for c in chunks]):
                    infos.extend(result)
                    progress.update(len(result))
    return infos


def _convert_chunk_star(args) -> list[DicomInfo]:
    return _convert_chunk(*args)


def _convert_chunk(chunk: list[tuple[str, str, int]], out_dir: str, size: int) -> list[DicomInfo]:
    """Convert a few files, writing each image at its row of ``<out_dir>/<split>.npy``.

    Rows are written with ``pwrite`` into the preallocated array file rather than
    through a memory map: written pages go to the page cache instead of staying
    resident in the worker, so memory does not grow with the dataset.
    """
    infos = []
    files: dict[str, tuple[int, int]] = {}  # split -> (descriptor, data offset)
    try:
        for path, split, row in chunk:
            if split not in files:
                array_path = f"{out_dir}/{split}.npy"
                files[split] = (os.open(array_path, os.O_WRONLY), _data_offset(array_path))
            image, info = read_dicom(path, size)
            fd, offset = files[split]
            os.pwrite(fd, np.ascontiguousarray(image).tobytes(), offset + row * size * size)
            infos.append(info)
    finally:
        for fd, _ in files.values():
            os.close(fd)
    return infos


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
        boxes=[[_scale_box(box, size / r.columns, size / r.rows) for box in r.boxes] for r in sample],
    )


def _scale_box(box, sx: float, sy: float) -> tuple[float, float, float, float]:
    """(x, y, width, height) from original pixels to array pixels."""
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)
