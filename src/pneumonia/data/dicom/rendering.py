"""Decoded DICOM pixels to the [0, 1] greyscale a radiologist's viewer shows, stored as uint8.

The display pipeline of DICOM PS3.4 N.2.1, through pydicom's own functions:
Modality LUT (``apply_modality_lut``: RescaleSlope/Intercept or a Modality LUT
Sequence) -> VOI LUT (``apply_voi_lut``: the first WindowCenter/WindowWidth pair
with its VOILUTFunction, LINEAR, LINEAR_EXACT or SIGMOID, or the VOI LUT
Sequence) -> Presentation LUT (``apply_presentation_lut`` for a Presentation
LUT Sequence; Presentation LUT Shape INVERSE or MONOCHROME1: lowest value
white) -> [0, 1] over the output range of the last step.

Windowing mode (``dicom_to_npy.windowing``, recorded in the model file):

* ``auto``: a file that declares a window (or a VOI LUT Sequence) is shown
  through it; a file that declares none is scaled by its stored range, as
  ``none`` does, so RSNA's files (8-bit, no window) give the same bytes;
* ``none``: every file is scaled by its stored range: ``value / (2**BitsStored
  - 1)`` (signed values shifted by ``2**(BitsStored - 1)`` first), MONOCHROME1
  inverted; the window a file declares is ignored.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut

Windowing = Literal["auto", "none"]
WINDOWING_MODES: tuple[str, ...] = ("auto", "none")


class RenderingError(ValueError):
    """The file's LUTs cannot be applied; the message says which and why (the reader adds the file name)."""


def declares_window(ds: pydicom.Dataset) -> bool:
    """Whether the file declares a VOI transform: a WindowCenter/WindowWidth pair or a VOI LUT Sequence."""
    try:
        if ds.get("VOILUTSequence"):
            return True
        return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")
    except Exception as exc:  # values are converted on access: a damaged one raises
        raise RenderingError(f"its VOI LUT or window cannot be read ({type(exc).__name__})") from None


def presentation_inverse(ds: pydicom.Dataset, monochrome1: bool) -> bool:
    """Whether the lowest value is shown white: MONOCHROME1, or Presentation LUT Shape INVERSE.

    DX images must say INVERSE *with* MONOCHROME1 (PS3.3 C.8.11.7.1.1): both mean
    the same single inversion, never two.
    """
    try:
        shape = ds.get("PresentationLUTShape")
    except Exception as exc:  # noqa: BLE001 - a damaged value
        raise RenderingError(f"its PresentationLUTShape cannot be read ({type(exc).__name__})") from None
    return monochrome1 or (isinstance(shape, str) and shape.strip().upper() == "INVERSE")


def render_stored_range(pixels: np.ndarray, bits_stored: int, signed: bool, inverse: bool) -> np.ndarray:
    """Scale by the stored range (no window): uint8 of ``value / (2**bits - 1)``, inverted when asked.

    In place, one float32 copy of the image at a time; the arithmetic is the
    reader's from before windowing existed, step by step, so its bytes are unchanged.
    """
    scaled = pixels.astype(np.float32)
    if signed:  # two's complement: the lowest storable value is black
        scaled += float(2 ** (bits_stored - 1))
    scaled /= float(2**bits_stored - 1)
    return _to_uint8(scaled, inverse)


def render_windowed(pixels: np.ndarray, ds: pydicom.Dataset, inverse: bool) -> np.ndarray:
    """Modality LUT -> VOI LUT -> Presentation LUT -> uint8, all by pydicom; RenderingError when they cannot apply."""
    _check_window(ds)
    try:
        values = apply_modality_lut(pixels, ds)
        lut = _uses_voi_lut_sequence(ds)
        if lut and not np.issubdtype(values.dtype, np.integer):
            # A LUT is indexed by whole numbers: a rescale by 1 and 0 gives floats that are whole.
            values = np.rint(values).astype(np.int64)
        low, high = _voi_output_range(ds, lut)
        values = apply_voi_lut(values, ds, index=0)
        if ds.get("PresentationLUTSequence"):
            # Its output is P-values (higher is brighter): any inversion is in the table itself.
            values = apply_presentation_lut(values, ds)
            low, high, inverse = 0.0, float(2 ** int(ds.PresentationLUTSequence[0].LUTDescriptor[2]) - 1), False
    except RenderingError:
        raise
    except Exception as exc:  # pydicom raises ValueError, KeyError, IndexError... for malformed LUTs
        raise RenderingError(f"its VOI or Modality LUT cannot be applied ({type(exc).__name__}: {_first_line(exc)})") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise RenderingError(f"its LUTs give an empty output range ({low} to {high})")
    scaled = np.asarray(values, dtype=np.float64)
    scaled = (scaled - low) / (high - low)
    return _to_uint8(scaled.astype(np.float32), inverse)


def _to_uint8(scaled: np.ndarray, inverse: bool) -> np.ndarray:
    """[0, 1] float32 (in place) to uint8, ``1 - x`` first when inverted.

    The inversion is over the whole output range, not pydicom's ``arr.max() - arr``
    for Presentation LUT Shape INVERSE, which would make the brightness depend on
    the brightest pixel of each image.
    """
    if inverse:
        np.subtract(1.0, scaled, out=scaled)
    scaled *= 255.0
    return np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)


def _uses_voi_lut_sequence(ds: pydicom.Dataset) -> bool:
    """What ``apply_voi_lut(prefer_lut=True)`` applies: the VOI LUT Sequence when its first item is complete."""
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _voi_output_range(ds: pydicom.Dataset, lut: bool) -> tuple[float, float]:
    """The lowest and highest value the VOI step can output, which [0, 1] spans."""
    if lut:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    # pydicom maps everything below the window to the bottom of its output range and
    # everything above to the top (a range that depends on the Modality LUT and the
    # signedness): read that range back by windowing the two extremes, rather than
    # deriving it a second time here.
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
    return float(low), float(high)


def _check_window(ds: pydicom.Dataset) -> None:
    """The first window's width must be positive (pydicom divides by it for SIGMOID without checking)."""
    if _uses_voi_lut_sequence(ds) or "WindowWidth" not in ds:
        return
    try:
        elem = ds["WindowWidth"]
        width = float(elem.value[0] if elem.VM > 1 else elem.value)
        center_elem = ds["WindowCenter"]
        center = float(center_elem.value[0] if center_elem.VM > 1 else center_elem.value)
    except Exception as exc:  # noqa: BLE001 - an unreadable or non-numeric value
        raise RenderingError(f"its WindowCenter/WindowWidth cannot be read ({type(exc).__name__})") from None
    if not (np.isfinite(width) and np.isfinite(center) and width > 0):
        raise RenderingError(f"its window (WindowCenter {center:g}, WindowWidth {width:g}) is not a window")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."
