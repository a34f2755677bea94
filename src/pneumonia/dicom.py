"""Reading chest X-ray DICOMs into the arrays the model sees.

Pixels are scaled to [0, 1] by the largest value their stored bits allow
(255 for the 8-bit RSNA files), MONOCHROME1 is inverted so that bone is bright,
and the image is resized to ``size`` x ``size`` and stored as uint8 (value/255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from PIL import Image

from pneumonia.errors import DicomReadError


@dataclass(frozen=True)
class DicomInfo:
    """Header facts kept in the manifest. Sizes in pixels of the original image."""

    view: str  # ViewPosition: AP or PA ("" when absent)
    sex: str  # PatientSex ("" when absent)
    age: int | None  # PatientAge in years
    rows: int
    columns: int
    pixel_spacing_mm: float | None  # row spacing in mm, when the file declares PixelSpacing


def read_dicom(path: str | Path, size: int) -> tuple[np.ndarray, DicomInfo]:
    """Return the image as a ``size`` x ``size`` uint8 array (value = intensity*255) and its header facts.

    Raises :class:`DicomReadError` naming the file for anything that is not a
    single-frame greyscale DICOM image.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DicomReadError(path, "not a DICOM file (no DICM header); replace it with the original or remove it") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise DicomReadError(path, f"corrupt DICOM ({exc.__class__.__name__}: {exc}); replace it with a good copy") from None
    if "PixelData" not in ds:
        raise DicomReadError(path, "the DICOM has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomReadError(path, "colour (RGB) DICOM; only greyscale X-rays are supported")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomReadError(path, "multi-frame DICOM; only single images are supported")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise DicomReadError(path, f"pixel data cannot be decoded ({exc.__class__.__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise DicomReadError(path, f"expected a 2-D greyscale image, got shape {pixels.shape}")

    bits = int(ds.get("BitsStored", 8))
    scaled = pixels.astype(np.float32) / float(2**bits - 1)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        scaled = 1.0 - scaled
    image = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    if image.shape != (size, size):
        # Pillow's bilinear filter antialiases when shrinking, unlike a plain bilinear sample.
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return image, _info(ds, pixels.shape)


def _info(ds: pydicom.Dataset, shape: tuple[int, int]) -> DicomInfo:
    spacing = ds.get("PixelSpacing")
    age = str(ds.get("PatientAge", "")).rstrip("YMWD")
    return DicomInfo(
        view=str(ds.get("ViewPosition", "")),
        sex=str(ds.get("PatientSex", "")),
        age=int(age) if age.isdigit() else None,
        rows=int(shape[0]),
        columns=int(shape[1]),
        pixel_spacing_mm=float(spacing[0]) if spacing else None,
    )
