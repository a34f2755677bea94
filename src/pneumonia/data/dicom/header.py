"""The DICOM header values the reader relies on, parsed and checked (:func:`read_header`), and :class:`DicomInfo`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pneumonia.core.errors import DicomReadError
from pneumonia.data.dicom.reasons import REPLACE, describe, short

MAX_PIXELS = 8192 * 8192
"""The largest image (Rows x Columns) accepted: chest films are at most about 4300 x 4300."""

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT",
           "PALETTE COLOR", "ARGB", "CMYK", "HSV")  # fmt: skip


@dataclass(frozen=True)
class DicomInfo:
    """Header facts kept in the manifest. Sizes in pixels of the original image."""

    view: str  # ViewPosition: AP or PA ("" when absent)
    sex: str  # PatientSex ("" when absent)
    age: int | None  # PatientAge in years
    rows: int
    columns: int
    pixel_spacing_mm: float | None  # row spacing in mm: PixelSpacing, else ImagerPixelSpacing; None when unknown
    pixel_spacing_note: str = ""  # why the spacing is unknown, or that it is ImagerPixelSpacing ("" when PixelSpacing)
    modality: str = ""  # Modality ("" when absent)
    body_part: str = ""  # BodyPartExamined ("" when absent)
    patient_id: str = ""  # PatientID ("" when absent)
    has_header: bool = True  # False for a PNG or JPEG: no header, so no chest check, view, sex, age or spacing


NOT_AN_IMAGE = "not a single greyscale image"  # how the reasons for multi-frame and 1-bit objects start


@dataclass(frozen=True)
class Header:
    """The header values the reader uses, parsed and checked."""

    transfer_syntax: UID
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    monochrome1: bool
    info: DicomInfo


def read_header(ds: pydicom.Dataset, path: str | Path) -> Header:
    """Parse and check every header value the reader uses; DicomReadError for a missing or malformed one.

    The checks run in a fixed order (transfer syntax, greyscale single frame, size,
    bits), so a file with several faults is always refused for the same one.
    """
    fields = _Fields(ds, path)
    syntax = _transfer_syntax(fields)
    monochrome1 = _greyscale_single_frame(fields)
    rows, columns = _image_size(fields)
    bits_allocated, bits_stored, representation = _bits(fields)
    spacing, spacing_note = _spacing(fields.get)
    get = fields.get
    return Header(
        transfer_syntax=syntax,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        monochrome1=monochrome1,
        info=DicomInfo(
            view=_str(get("ViewPosition")),
            sex=_str(get("PatientSex")),
            age=_age(get("PatientAge", "")),
            rows=rows,
            columns=columns,
            pixel_spacing_mm=spacing,
            pixel_spacing_note=spacing_note,
            modality=_str(get("Modality")).strip(),
            body_part=_str(get("BodyPartExamined")).strip(),
            patient_id=_str(get("PatientID")).strip(),
        ),
    )


class _Fields:
    """The header values of ``ds`` as the reader wants them; DicomReadError naming ``path`` for a malformed one."""

    def __init__(self, ds: pydicom.Dataset, path: str | Path):
        self.ds = ds
        self.path = path

    def get(self, keyword: str, default=None, meta: bool = False):
        """The value of ``keyword`` (in the file meta header with ``meta``), or ``default`` when absent."""
        try:
            source = getattr(self.ds, "file_meta", None) if meta else self.ds
            return default if source is None else source.get(keyword, default)
        except Exception as exc:  # the value is converted on access: unknown VR, bad bytes, ...
            raise DicomReadError(
                self.path, f"corrupt DICOM header: {keyword} cannot be read ({describe(exc)}); {REPLACE}"
            ) from None

    def bad(self, keyword: str, value, expected: str) -> DicomReadError:
        """The error for a ``value`` of ``keyword`` that is not what was ``expected``."""
        return DicomReadError(self.path, f"corrupt DICOM header: {keyword} is {short(value)}, {expected}; {REPLACE}")

    def number(self, keyword: str, default: int | None = None) -> int:
        """A whole number; ``default`` when absent or empty (no default: the header must have it)."""
        value = self.get(keyword)
        if value is None or value == "":
            if default is None:
                raise DicomReadError(self.path, f"the DICOM header has no {keyword}; {REPLACE}")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.bad(keyword, value, "not a whole number")
        try:
            return int(value)
        except ValueError:
            raise self.bad(keyword, value, "not a whole number") from None

    def text(self, keyword: str, default: str = "", meta: bool = False) -> str:
        """A single text value; ``default`` when absent."""
        value = self.get(keyword, meta=meta)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.bad(keyword, value, "not a single text value")
        return value


def _transfer_syntax(fields: _Fields) -> UID:
    """The file meta header's TransferSyntaxUID, one pydicom knows."""
    syntax = fields.text("TransferSyntaxUID", meta=True).strip("\0 ")
    if not syntax:
        raise DicomReadError(fields.path, f"the DICOM file meta header has no TransferSyntaxUID; {REPLACE}")
    syntax = UID(syntax)
    try:
        known = syntax.is_transfer_syntax and isinstance(syntax.is_encapsulated, bool)
    except ValueError:  # a UID that is no transfer syntax pydicom knows
        known = False
    if not known:
        raise fields.bad("TransferSyntaxUID", str(syntax), "not a known transfer syntax")
    return syntax


def _greyscale_single_frame(fields: _Fields) -> bool:
    """Check for one frame of one greyscale sample per pixel; whether it is MONOCHROME1 (lowest value white)."""
    samples = fields.number("SamplesPerPixel", 1)
    photometric = fields.text("PhotometricInterpretation", "MONOCHROME2").strip()
    if samples in (3, 4) or photometric in _COLOUR:
        raise DicomReadError(
            fields.path, f"colour DICOM (SamplesPerPixel {samples}, PhotometricInterpretation {short(photometric)}); "
            "only greyscale X-rays are supported"
        )  # fmt: skip
    if samples != 1:
        raise fields.bad("SamplesPerPixel", samples, "not 1 (greyscale)")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise fields.bad("PhotometricInterpretation", photometric, "not MONOCHROME1 or MONOCHROME2")
    frames = fields.number("NumberOfFrames", 1) or 1
    if frames > 1:
        raise DicomReadError(
            fields.path, f"{NOT_AN_IMAGE}: multi-frame DICOM ({frames} frames); give each frame as a file"
        )
    if frames < 0:
        raise fields.bad("NumberOfFrames", frames, "not a number of frames")
    return photometric == "MONOCHROME1"


def _image_size(fields: _Fields) -> tuple[int, int]:
    """Rows and Columns, at most :data:`MAX_PIXELS` pixels in all."""
    rows, columns = fields.number("Rows"), fields.number("Columns")
    if rows < 1 or columns < 1:
        raise fields.bad("Rows x Columns", f"{rows} x {columns}", "not an image size")
    if rows * columns > MAX_PIXELS:
        raise DicomReadError(
            fields.path, f"image of {rows} x {columns} pixels is larger than the {MAX_PIXELS:,} pixels this reader "
            f"accepts (a damaged header?); {REPLACE} or downscale it"
        )  # fmt: skip
    return rows, columns


def _bits(fields: _Fields) -> tuple[int, int, int]:
    """BitsAllocated (8 or 16), BitsStored (1 to BitsAllocated), PixelRepresentation (0 unsigned, 1 signed)."""
    bits_allocated = fields.number("BitsAllocated")
    if bits_allocated == 1:
        raise DicomReadError(fields.path, f"{NOT_AN_IMAGE}: 1-bit pixels (BitsAllocated 1: a segmentation or "
                                          "overlay object, not a radiograph); give the radiograph it was made from")
    if bits_allocated not in (8, 16):
        raise fields.bad("BitsAllocated", bits_allocated, "not 8 or 16")
    bits_stored = fields.number("BitsStored")
    if not 1 <= bits_stored <= bits_allocated:
        raise fields.bad("BitsStored", bits_stored, f"not between 1 and BitsAllocated ({bits_allocated})")
    signed = fields.number("PixelRepresentation", 0)
    if signed not in (0, 1):
        raise fields.bad("PixelRepresentation", signed, "not 0 (unsigned) or 1 (signed)")
    return bits_allocated, bits_stored, signed


def _str(value) -> str:
    return "" if value is None else str(value)


def _age(value) -> int | None:
    """Years from "51" (RSNA's form) or "051Y"; None when absent or not a plain number."""
    age = str(value).rstrip("YMWD")
    return int(age) if age.isascii() and age.isdigit() else None


def _spacing(get) -> tuple[float | None, str]:
    """Row spacing in mm and a note: PixelSpacing, else ImagerPixelSpacing (at the detector), else unknown.

    Spacing only feeds the area in mm², so a bad value makes it unknown, with the
    reason in the note, rather than refusing the image.
    """
    problems = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = get(keyword)
        except DicomReadError:
            problems.append(f"{keyword} cannot be read")
            continue
        if value is None or value == "":
            continue
        first = value[0] if isinstance(value, (list, MultiValue)) else value
        try:
            spacing = float(first)
        except (TypeError, ValueError):
            spacing = math.nan
        if math.isfinite(spacing) and spacing > 0:
            if keyword == "PixelSpacing":
                return spacing, ""
            used = "ImagerPixelSpacing used (at the detector plane, so areas include the X-ray magnification)"
            return spacing, "; ".join([*problems, used]) if problems else used + ": no PixelSpacing"
        problems.append(f"{keyword} {short(first)} is not a positive number of mm")
    return None, "; ".join(problems) + "; area in mm² unknown" if problems else ""
