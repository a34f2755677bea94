"""Reading chest X-ray DICOMs into the arrays the model sees.

Pixels are scaled to [0, 1] by the largest value their stored bits allow
(255 for the 8-bit RSNA files), MONOCHROME1 is inverted so that bone is bright,
and the image is resized to ``size`` x ``size`` and stored as uint8 (value/255).

Fast path: for 8-bit JPEG Baseline files (all of RSNA's) shrunk to at most
half their side, Pillow decodes the JPEG frame with ``draft``, which lets the
decoder downscale in the DCT domain (by 2, 4 or 8) to the smallest size still
larger than the target, before the final bilinear resize. It differs from
decoding in full and then resizing by well under one grey level on average
(tests/test_dicom.py guards this); every other file takes the plain pydicom path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import io

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import JPEGBaseline8Bit
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


def read_dicom(path: str | Path, size: int, fast: bool = True) -> tuple[np.ndarray, DicomInfo]:
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
    if fast:
        image = _draft_decode(ds, size)
        if image is not None:
            return image, _info(ds, (int(ds.Rows), int(ds.Columns)))
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


def _draft_decode(ds: pydicom.Dataset, size: int) -> np.ndarray | None:
    """The fast path for 8-bit JPEG Baseline; None when it does not apply (the caller decodes plainly)."""
    meta = getattr(ds, "file_meta", None)
    if (
        meta is None
        or meta.get("TransferSyntaxUID") != JPEGBaseline8Bit
        or int(ds.get("BitsStored", 0)) != 8
        or ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2")
        or 2 * size > min(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
    ):
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        jpeg = Image.open(io.BytesIO(frame))
        # Stop the DCT downscale above the target, never at it: the final antialiased
        # resize then smooths like the plain path's (DCT scaling exactly to size is a
        # box filter over 8x8 blocks, which drifts by about a grey level on grainy films).
        jpeg.draft("L", (size + 1, size + 1))
        image = np.asarray(jpeg.convert("L").resize((size, size), Image.BILINEAR))
    except Exception:
        return None  # let the plain path decode it or report the error
    return 255 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


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
