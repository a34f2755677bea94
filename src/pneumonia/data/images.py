"""Any radiograph file into the uint8 image the model sees: DICOM, PNG (8- or 16-bit) or JPEG.

:func:`read_image_sizes` is the one entry point the conversion stage and ``predict`` call. A
``.png``, ``.jpg`` or ``.jpeg`` file goes to :func:`read_picture_sizes`; anything else is read as
DICOM (:func:`~pneumonia.data.dicom.read.read_dicom_sizes`), whatever its name, as before.

A picture has no header, so its :class:`~pneumonia.data.dicom.header.DicomInfo` knows only its size:
no view, sex, age or pixel spacing (an area cannot be given in mm²), and no Modality or
BodyPartExamined, so nothing can say from the file that it is a chest radiograph
(``has_header`` is False and callers say so). Its values are shown as any image viewer shows them:
the stored range is black to white (``value / 255``, or ``/ 65535`` for 16 bits, the rule DICOM
files without a window get), after the EXIF orientation a camera or phone recorded. An RGB picture
whose three channels are equal (many exports, Kermany's JPEGs) is grey; a true-colour picture,
a 1-bit or floating-point one is refused with its reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.core.errors import ImageReadError
from pneumonia.data.rsna import IMAGE_SUFFIXES
from pneumonia.data.dicom.header import MAX_PIXELS, DicomInfo
from pneumonia.data.dicom.read import read_dicom_sizes, resize_square
from pneumonia.data.dicom.rendering import Windowing, render_stored_range

PICTURE_SUFFIXES = tuple(suffix for suffix in IMAGE_SUFFIXES if suffix != ".dcm")

MAX_COLOUR_SPREAD = 4.0
"""The largest mean difference (grey levels of 255) between a pixel's brightest and darkest channel of a picture
still taken as grey: JPEG's rounding and chroma subsampling leave a grey image's channels 0-2 levels apart, a
colour photograph tens."""

NO_HEADER_NOTE = "no DICOM header (a PNG or JPEG): pixel spacing unknown, so no area in mm²"


def is_picture(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PICTURE_SUFFIXES


def read_image_sizes(
    path: str | Path, sizes: tuple[int, ...], windowing: Windowing = "auto"
) -> tuple[list[np.ndarray], DicomInfo]:
    """The file as ``size`` x ``size`` uint8 images (one per size) and what is known of it; ImageReadError if not."""
    if is_picture(path):
        return read_picture_sizes(path, sizes)
    return read_dicom_sizes(path, sizes, windowing=windowing)


def read_picture_sizes(path: str | Path, sizes: tuple[int, ...]) -> tuple[list[np.ndarray], DicomInfo]:
    """A PNG or JPEG, grey or grey stored as RGB, at each of ``sizes``; ImageReadError naming the file otherwise."""
    full = _grey_pixels(path)
    rows, columns = full.shape
    info = DicomInfo(view="", sex="", age=None, rows=rows, columns=columns, pixel_spacing_mm=None,
                     pixel_spacing_note=NO_HEADER_NOTE, has_header=False)
    return [resize_square(full, size) for size in sizes], info


def _grey_pixels(path: str | Path) -> np.ndarray:
    """The picture's grey values as uint8 at its own size (16-bit scaled by its stored range)."""
    replace = "give a greyscale PNG or JPEG of the radiograph, or the DICOM"
    try:
        with Image.open(path) as picture:
            if picture.width * picture.height > MAX_PIXELS:
                raise ImageReadError(path, f"{picture.width} x {picture.height} pixels is larger than any radiograph; "
                                           f"{replace}")
            picture = ImageOps.exif_transpose(picture)
            mode = picture.mode
            if mode in ("1", "F"):
                raise ImageReadError(path, f"a {'1-bit' if mode == '1' else 'floating-point'} picture is not a "
                                           f"radiograph's grey levels; {replace}")
            if mode.startswith("I"):  # 16-bit PNG ("I;16", or "I" with values 0-65535)
                values = np.asarray(picture, dtype=np.int64)
                if values.min() < 0 or values.max() > 65535:
                    raise ImageReadError(path, f"values {values.min()} to {values.max()} are not 16-bit grey levels; "
                                               f"{replace}")
                return render_stored_range(values.astype(np.uint16), 16, False, False)
            if mode in ("L", "LA"):
                return np.asarray(picture.getchannel("L"))
            rgb = np.asarray(picture.convert("RGB"))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "no such file; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow reports a truncated or damaged file as OSError or SyntaxError, an unknown format as Unidentified.
        raise ImageReadError(path, f"not a readable PNG or JPEG ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); {replace}") from None
    spread = float((rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)).mean())
    if spread > MAX_COLOUR_SPREAD:
        raise ImageReadError(path, f"a colour picture (its channels differ by {spread:.1f} grey levels on average), "
                                   f"not a greyscale radiograph; {replace}")
    # Equal channels: their mean is the grey value (Pillow's "L" weights would give the same to within rounding).
    return np.rint(rgb.mean(axis=2)).astype(np.uint8)
