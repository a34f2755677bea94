"""Reading chest X-ray DICOMs into the arrays the model sees.

Pixels are decoded by pydicom and its decoder plugins (Pillow for JPEG
Baseline; pylibjpeg with pylibjpeg-libjpeg for JPEG Extended 12-bit, Lossless
and JPEG-LS; pylibjpeg-openjpeg for JPEG 2000; pydicom itself for RLE and the
uncompressed syntaxes), rendered to [0, 1] as a viewer would
(:mod:`pneumonia.data.rendering`: Modality LUT, VOI LUT, Presentation LUT and
MONOCHROME1, or, for a file without a window, scaled by its stored range
``value / (2**BitsStored - 1)``: 255 for the 8-bit RSNA files), and resized to ``size`` x ``size`` and stored as uint8 (value/255). A non-square
image is stretched to the square, each axis by its own factor, like the
reference's ``cv2.resize``: the aspect ratio is not kept and nothing is cropped
or padded. :class:`DicomInfo` keeps the original Rows and Columns, so a box
scales by ``size / columns`` across and ``size / rows`` down.

Fast path: for 8-bit JPEG Baseline files (all of RSNA's) shrunk to at most
half their side, Pillow decodes the JPEG frame with ``draft``, which lets the
decoder downscale in the DCT domain (by 2, 4 or 8) to the smallest size still
larger than the target, before the final bilinear resize. It differs from
decoding in full and then resizing by well under one grey level on average
(tests/test_dicom.py guards this); every other file takes the plain pydicom path.

Untrusted input: anything that is not a single-frame greyscale DICOM image
raises :class:`DicomReadError`, one line naming the file, the problem and what
to do; no other exception escapes for a bad file (tests/test_dicom_fuzz.py feeds
the reader hundreds of damaged files). Before anything is decoded, cheap checks
refuse:

* a header value the reader relies on that does not parse or make sense (Rows,
  Columns, BitsAllocated 8 or 16, 1 <= BitsStored <= BitsAllocated,
  PixelRepresentation, SamplesPerPixel, NumberOfFrames, PhotometricInterpretation,
  a window that is not one), or an image of more than :data:`MAX_PIXELS` pixels, so a damaged
  header cannot make the reader allocate gigabytes;
* a file cut short, or with bytes after its last element (pydicom silently
  drops what it cannot read);
* a deflated data set (pydicom inflates it whole, without a size limit);
* uncompressed pixel data whose length is not Rows x Columns x BitsAllocated/8
  (one padding byte allowed), and compressed pixel data whose items do not fill
  it exactly: a cut file, or bytes lost or inserted, would otherwise give a
  shifted image;
* a JPEG Baseline (or Extended) frame that is not well formed: it must start
  with SOI, hold one 8-bit (Extended: 8- or 12-bit) greyscale sequential frame
  of the header's Rows x Columns and one scan with no marker inside the
  compressed data, and end with EOI (padding after it, 0x00 or 0xFF, is fine).
  A truncated frame is refused, never filled in with grey;
* a transfer syntax that no installed plugin decodes: the message names it and
  the packages that would.

Not refused: a PixelSpacing of zero or that does not parse makes the spacing
unknown (ImagerPixelSpacing is used when it is good), with the reason in
:attr:`DicomInfo.pixel_spacing_note`; a file without the 128-byte preamble and
"DICM" is read when it holds pixel data and the image attributes. Whether the
file is a chest radiograph is :func:`chest_problem`'s question, not the reader's.

Limit: Pillow decodes JPEG leniently and does not report libjpeg's "corrupt
data" warnings, so damage inside the compressed data that keeps this structure
(bytes changed without creating a marker, or a frame cut and closed with a new
EOI) decodes to a damaged image that cannot be told from a real one here;
changed bytes of uncompressed pixels cannot be detected either (DICOM files
carry no checksum).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
)
from PIL import Image

from pneumonia.core.errors import DicomReadError, NotChestError
from pneumonia.data.rendering import (
    RenderingError, Windowing, declares_window, presentation_inverse, render_stored_range, render_windowed,
)

MAX_PIXELS = 8192 * 8192
"""The largest image (Rows x Columns) accepted: chest films are at most about 4300 x 4300."""

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT",
           "PALETTE COLOR", "ARGB", "CMYK", "HSV")  # fmt: skip
_REPLACE = "replace the file with a good copy"
_DEFLATED = b"1.2.840.10008.1.2.1.99"


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


NOT_AN_IMAGE = "not a single greyscale image"  # how the reasons for multi-frame and 1-bit objects start
NOT_CHEST = "not a chest radiograph"  # how chest_problem's reasons start
PROJECTION_RADIOGRAPHY = ("CR", "DX", "DR")
"""Modality values of a projection radiograph (DR is not a DICOM term, but some systems write it)."""
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORACE")  # English, German/French, Spanish, Italian


def chest_problem(info: DicomInfo) -> str | None:
    """Why the file is not a chest radiograph, or None: Modality not CR/DX/DR, or BodyPartExamined not a chest.

    A missing or empty tag is not a reason: many exports drop BodyPartExamined.
    """
    if info.modality and info.modality.upper() not in PROJECTION_RADIOGRAPHY:
        return f"{NOT_CHEST}: Modality={info.modality}"
    body = info.body_part.strip().upper()
    if body and not any(word in _CHEST_WORDS for word in body.replace("_", " ").replace("-", " ").split()):
        return f"{NOT_CHEST}: BodyPartExamined={info.body_part.strip()}"
    return None


def check_chest(path: str | Path, info: DicomInfo) -> None:
    """Raise :class:`NotChestError` when :func:`chest_problem` finds one."""
    problem = chest_problem(info)
    if problem:
        raise NotChestError(path, problem)


@dataclass(frozen=True)
class _Header:
    """The header values the reader uses, parsed and checked."""

    transfer_syntax: UID
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    monochrome1: bool
    info: DicomInfo


def read_dicom(
    path: str | Path, size: int, fast: bool = True, windowing: Windowing = "auto"
) -> tuple[np.ndarray, DicomInfo]:
    """Return the image as a ``size`` x ``size`` uint8 array (value = intensity*255) and its header facts.

    ``windowing``: ``auto`` shows a file through the window it declares (none
    declared: its stored range); ``none`` always uses the stored range (see
    :mod:`pneumonia.data.rendering`). Raises :class:`DicomReadError` naming the file
    for anything that is not a single-frame greyscale DICOM image, including
    truncated and damaged files.
    """
    images, info = read_dicom_sizes(path, (size,), fast, windowing)
    return images[0], info


def read_dicom_sizes(
    path: str | Path, sizes: tuple[int, ...], fast: bool = True, windowing: Windowing = "auto"
) -> tuple[list[np.ndarray], DicomInfo]:
    """:func:`read_dicom` at several sizes from one read of the file (e.g. the model's input and an overlay's).

    Each size's image is the one :func:`read_dicom` gives at that size alone, byte for byte.
    """
    ds = _open(path)
    header = _header(ds, path)
    data = _pixel_data(ds, path)
    try:
        windowed = windowing == "auto" and declares_window(ds)
        # Presentation LUT Shape is part of the display pipeline; `none` keeps the old rule (MONOCHROME1 only).
        inverse = presentation_inverse(ds, header.monochrome1) if windowing == "auto" else header.monochrome1
    except RenderingError as exc:
        raise DicomReadError(path, f"{exc}; {_REPLACE}") from None
    drafts = False
    if header.transfer_syntax.is_encapsulated:
        frame = _single_frame(data, path)
        if header.transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
            problem = _jpeg_problem(frame, header)
            if problem:
                raise DicomReadError(path, f"{problem}; {_REPLACE}")
        drafts = header.transfer_syntax == JPEGBaseline8Bit and not windowed and not ds.get("PresentationLUTSequence")
    else:
        _check_length(data, header, path)

    full: np.ndarray | None = None
    images = []
    for size in sizes:
        image = None
        if drafts and fast and 2 * size <= min(header.rows, header.columns):
            image = _draft_decode(frame, size)
            if image is not None and inverse:
                image = 255 - image
        if image is None:
            if full is None:
                full = _render(ds, header, path, windowed, inverse)
            # Pillow's bilinear filter antialiases when shrinking, unlike a plain bilinear sample.
            # A non-square image is stretched: each axis is resized by its own factor.
            image = full if full.shape == (size, size) else np.asarray(
                Image.fromarray(full).resize((size, size), Image.BILINEAR))
        images.append(image)
    return images, header.info


def _render(ds: pydicom.Dataset, header: _Header, path: str | Path, windowed: bool, inverse: bool) -> np.ndarray:
    """The whole image decoded and rendered to uint8 at its own size."""
    pixels = _decode(ds, header, path)
    try:
        if windowed:
            return render_windowed(pixels, ds, inverse)
        return render_stored_range(pixels, header.bits_stored, header.signed, inverse)
    except RenderingError as exc:
        raise DicomReadError(
            path, f"{exc}; replace the file, or set dicom_to_npy.windowing: none to ignore the window it declares"
        ) from None


def _decode(ds: pydicom.Dataset, header: _Header, path: str | Path) -> np.ndarray:
    """The stored values (signed where PixelRepresentation says so), Rows x Columns; DicomReadError otherwise."""
    syntax = header.transfer_syntax
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomReadError(
            path, f"{syntax.name} ({syntax}) pixel data: pydicom has no decoder for this transfer syntax; export the "
            "image uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE"
        ) from None  # fmt: skip
    if not decoder.is_available:
        raise DicomReadError(
            path, f"{syntax.name} ({syntax}) pixel data, which no installed decoder plugin reads; install one "
            f"({'; '.join(decoder.missing_dependencies)}) or export the image uncompressed"
        )  # fmt: skip
    # Pillow (libjpeg-turbo) for 8-bit JPEG Baseline, as before any other plugin was installed:
    # another decoder's IDCT could change the converted bytes by a grey level here and there.
    plugin = "pillow" if syntax == JPEGBaseline8Bit and "pillow" in decoder.available_plugins else ""
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom and its decoders raise many types for damaged data
        tried = ", ".join([plugin] if plugin else decoder.available_plugins)
        raise DicomReadError(
            path, f"pixel data cannot be decoded ({_describe(exc)}); the {syntax.name} data is damaged, or encoded "
            f"in a way the installed decoders ({tried}) reject: replace the file with a good copy, or export it "
            "uncompressed"
        ) from None  # fmt: skip
    if pixels.shape != (header.rows, header.columns):
        raise DicomReadError(
            path, f"decoded image has shape {pixels.shape}, not Rows x Columns = {header.rows} x "
            f"{header.columns}; {_REPLACE}"
        )  # fmt: skip
    return pixels


def _open(path: str | Path) -> pydicom.Dataset:
    try:
        data = Path(path).read_bytes()  # parsing from memory is also faster than from the file
    except OSError as exc:
        reason = exc.strerror or _describe(exc)
        raise DicomReadError(path, f"cannot be read ({reason}); check that the file exists and is readable") from None
    if _DEFLATED in data[128:640]:  # the file meta header's TransferSyntaxUID, which precedes any long element
        # pydicom inflates the whole data set in one go: a small file could ask for gigabytes.
        raise DicomReadError(
            path, "deflated DICOM (Deflated Explicit VR Little Endian) is not accepted: inflating it has no size "
            "limit; save it uncompressed or as JPEG"
        )  # fmt: skip
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = _without_preamble(data, path)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise DicomReadError(path, f"corrupt DICOM ({_describe(exc)}); {_REPLACE}") from None
    if "PixelData" not in ds:
        raise DicomReadError(path, _why_no_pixel_data(ds, len(data)))
    _check_end(ds, len(data), path)
    _fill_transfer_syntax(ds, path)
    return ds


_IMAGE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation")


def _without_preamble(data: bytes, path: str | Path) -> pydicom.Dataset:
    """A file without the 128-byte preamble and "DICM" (older or hand-made exports): read when it is an image.

    pydicom's ``force=True`` parses anything as elements, so the result is kept only
    when it holds pixel data and the attributes that describe it; otherwise the file
    is refused as not DICOM. Without a file meta header the transfer syntax is the
    encoding pydicom found (uncompressed: compressed data needs the header).
    """
    refusal = "not a DICOM file (no DICOM file header, and not a headerless DICOM image); replace it with the original or remove it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        is_image = "PixelData" in ds and all(keyword in ds for keyword in _IMAGE_ATTRIBUTES)
    except Exception:  # noqa: BLE001 - whatever pydicom makes of non-DICOM bytes, the answer is the same
        is_image = False
    if not is_image:
        raise DicomReadError(path, refusal)
    return ds


def _fill_transfer_syntax(ds: pydicom.Dataset, path: str | Path) -> None:
    """A data set without a file meta header (or without its TransferSyntaxUID): the encoding pydicom read it in.

    That is the truth for uncompressed pixel data; compressed data does not say its codec, so it is refused.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    if ds.get_item("PixelData") is not None and ds.get_item("PixelData").length == 0xFFFFFFFF:
        raise DicomReadError(
            path, f"compressed pixel data, but no file meta header says how it is compressed (no TransferSyntaxUID); {_REPLACE}"
        )  # fmt: skip
    implicit, little = ds.original_encoding
    if implicit is None:
        raise DicomReadError(path, f"the DICOM file meta header has no TransferSyntaxUID; {_REPLACE}")
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _check_end(ds: pydicom.Dataset, size: int, path: str | Path) -> None:
    """The last element must end where the file ends: pydicom ignores bytes it cannot read after it,
    so bytes inserted into uncompressed pixel data would otherwise shift the image silently."""
    try:
        last = ds.get_item(next(reversed(ds.keys())))
        if not getattr(last, "is_raw", False) or last.value is None:
            return  # a sequence (already parsed): no cheap way to find its end
        if last.length == 0xFFFFFFFF:  # encapsulated pixel data: its value, then the 8-byte delimiter
            end = last.value_tell + len(last.value) + 8
        else:
            end = last.value_tell + last.length
    except Exception:  # noqa: BLE001 - the checks after this one still apply
        return
    if end < size:
        raise DicomReadError(
            path, f"corrupt DICOM: {size - end:,} bytes after the last element (which ends at byte {end:,}) cannot be "
            f"read (bytes inserted, or a length damaged); {_REPLACE}"
        )  # fmt: skip
    if end > size and last.tag != 0x7FE00010:  # short pixel data itself gets its own message, later
        raise DicomReadError(
            path, f"corrupt DICOM: element {last.tag} after the pixel data runs past the end of the file (bytes "
            f"inserted, a length damaged, or the file cut short); {_REPLACE}"
        )  # fmt: skip


def _why_no_pixel_data(ds: pydicom.Dataset, size: int) -> str:
    """Tell a file cut short from one that never had pixel data: pydicom stops quietly at the end of the file."""
    truncated = "truncated or damaged DICOM: {}; replace it with a complete copy"
    if len(ds) == 0:
        # pydicom drops the whole data set when a value runs past the end of the file.
        return truncated.format("a value runs past the end of the file, so nothing after the file meta header can be read")
    end = 0
    try:
        for tag in ds.keys():
            elem = ds.get_item(tag)
            if getattr(elem, "is_raw", False) and elem.length != 0xFFFFFFFF:
                if elem.value is not None and len(elem.value) < elem.length:
                    return truncated.format(f"element {elem.tag} runs past the end of the file, before the pixel data")
                end = max(end, elem.value_tell + elem.length)
    except Exception:  # noqa: BLE001 - only choosing the message; the file is refused either way
        end = 0
    if 0 < end < size:
        return truncated.format(f"the header cannot be read after byte {end}, before the pixel data")
    if "Rows" in ds or "BitsAllocated" in ds:
        return "the DICOM has no pixel data although its header describes an image (cut short?); replace it with a complete copy"
    return (
        "the DICOM has no pixel data (not an image, or cut short between two elements); "
        "replace it with a complete copy or remove it"
    )


def _header(ds: pydicom.Dataset, path: str | Path) -> _Header:
    """Parse and check every header value the reader uses; DicomReadError for a missing or malformed one."""

    def get(keyword: str, default=None, meta: bool = False):
        try:
            source = getattr(ds, "file_meta", None) if meta else ds
            return default if source is None else source.get(keyword, default)
        except Exception as exc:  # the value is converted on access: unknown VR, bad bytes, ...
            raise DicomReadError(path, f"corrupt DICOM header: {keyword} cannot be read ({_describe(exc)}); {_REPLACE}") from None

    def bad(keyword: str, value, expected: str) -> DicomReadError:
        return DicomReadError(path, f"corrupt DICOM header: {keyword} is {_short(value)}, {expected}; {_REPLACE}")

    def number(keyword: str, default: int | None = None) -> int:
        value = get(keyword)
        if value is None or value == "":
            if default is None:
                raise DicomReadError(path, f"the DICOM header has no {keyword}; {_REPLACE}")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad(keyword, value, "not a whole number")
        try:
            return int(value)
        except ValueError:
            raise bad(keyword, value, "not a whole number") from None

    def text(keyword: str, default: str = "", meta: bool = False) -> str:
        value = get(keyword, meta=meta)
        if value is None:
            return default
        if not isinstance(value, str):
            raise bad(keyword, value, "not a single text value")
        return value

    syntax = text("TransferSyntaxUID", meta=True).strip("\0 ")
    if not syntax:
        raise DicomReadError(path, f"the DICOM file meta header has no TransferSyntaxUID; {_REPLACE}")
    syntax = UID(syntax)
    try:
        known = syntax.is_transfer_syntax and isinstance(syntax.is_encapsulated, bool)
    except ValueError:  # a UID that is no transfer syntax pydicom knows
        known = False
    if not known:
        raise bad("TransferSyntaxUID", str(syntax), "not a known transfer syntax")

    samples = number("SamplesPerPixel", 1)
    photometric = text("PhotometricInterpretation", "MONOCHROME2").strip()
    if samples in (3, 4) or photometric in _COLOUR:
        raise DicomReadError(
            path, f"colour DICOM (SamplesPerPixel {samples}, PhotometricInterpretation {_short(photometric)}); "
            "only greyscale X-rays are supported"
        )  # fmt: skip
    if samples != 1:
        raise bad("SamplesPerPixel", samples, "not 1 (greyscale)")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise bad("PhotometricInterpretation", photometric, "not MONOCHROME1 or MONOCHROME2")
    frames = number("NumberOfFrames", 1) or 1
    if frames > 1:
        raise DicomReadError(path, f"{NOT_AN_IMAGE}: multi-frame DICOM ({frames} frames); give each frame as a file")
    if frames < 0:
        raise bad("NumberOfFrames", frames, "not a number of frames")

    rows, columns = number("Rows"), number("Columns")
    if rows < 1 or columns < 1:
        raise bad("Rows x Columns", f"{rows} x {columns}", "not an image size")
    if rows * columns > MAX_PIXELS:
        raise DicomReadError(
            path, f"image of {rows} x {columns} pixels is larger than the {MAX_PIXELS:,} pixels this reader "
            f"accepts (a damaged header?); {_REPLACE} or downscale it"
        )  # fmt: skip
    bits_allocated = number("BitsAllocated")
    if bits_allocated == 1:
        raise DicomReadError(path, f"{NOT_AN_IMAGE}: 1-bit pixels (BitsAllocated 1: a segmentation or overlay "
                                   "object, not a radiograph); give the radiograph it was made from")
    if bits_allocated not in (8, 16):
        raise bad("BitsAllocated", bits_allocated, "not 8 or 16")
    bits_stored = number("BitsStored")
    if not 1 <= bits_stored <= bits_allocated:
        raise bad("BitsStored", bits_stored, f"not between 1 and BitsAllocated ({bits_allocated})")
    signed = number("PixelRepresentation", 0)
    if signed not in (0, 1):
        raise bad("PixelRepresentation", signed, "not 0 (unsigned) or 1 (signed)")
    spacing, spacing_note = _spacing(get)

    return _Header(
        transfer_syntax=syntax,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed == 1,
        monochrome1=photometric == "MONOCHROME1",
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
        problems.append(f"{keyword} {_short(first)} is not a positive number of mm")
    return None, "; ".join(problems) + "; area in mm² unknown" if problems else ""


def _pixel_data(ds: pydicom.Dataset, path: str | Path) -> bytes:
    try:
        data = ds.PixelData
    except Exception as exc:
        reason = f"corrupt DICOM: the pixel data element cannot be read ({_describe(exc)}); {_REPLACE}"
        raise DicomReadError(path, reason) from None
    if not isinstance(data, bytes):
        raise DicomReadError(path, f"corrupt DICOM: the pixel data element holds {type(data).__name__}, not bytes; {_REPLACE}")
    return data


def _single_frame(data: bytes, path: str | Path) -> bytes:
    """The frame of single-frame encapsulated pixel data: its fragments after the Basic Offset Table, joined.

    Every item must end exactly where the next begins and the last at the end of the
    data, so a byte lost from or inserted into the compressed frame is caught here.
    """
    items, pos, end = [], 0, len(data)
    while pos < end:
        if pos + 8 > end or not data.startswith(b"\xfe\xff\x00\xe0", pos):
            problem = f"no item tag at byte {pos}: bytes inserted or overwritten?"
            break
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + length > end:
            problem = f"an item of {length:,} bytes runs past the end of the pixel data: bytes lost?"
            break
        items.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    else:
        problem = "no compressed frame after the offset table" if len(items) < 2 else None
    if problem:
        raise DicomReadError(path, f"corrupt DICOM: the compressed pixel data is damaged ({problem}); {_REPLACE}")
    return items[1] if len(items) == 2 else b"".join(items[1:])


def _check_length(data: bytes, header: _Header, path: str | Path) -> None:
    """Uncompressed pixel data must hold exactly Rows x Columns pixels, plus padding.

    Padding: one byte to an even length, or trailing zero bytes (some exporters pad
    to a block size; pydicom drops them), which cannot hide an image shifted by
    inserted bytes: those would leave the image's own last bytes at the end.
    """
    need = header.rows * header.columns * (header.bits_allocated // 8)
    if len(data) == need or (need % 2 and len(data) == need + 1):
        return
    if len(data) > need and not data[need:].strip(b"\0"):
        return
    what = f"Rows x Columns = {header.rows} x {header.columns} at {header.bits_allocated} bits need {need:,}"
    if len(data) < need:
        reason = f"truncated DICOM: the pixel data holds {len(data):,} bytes, but {what}; replace it with a complete copy"
        raise DicomReadError(path, reason)
    raise DicomReadError(
        path, f"corrupt DICOM: the pixel data holds {len(data):,} bytes, but {what} (bytes inserted or a damaged "
        f"header); {_REPLACE}"
    )  # fmt: skip


def _jpeg_problem(frame: bytes, header: _Header) -> str | None:
    """What is structurally wrong with a JPEG Baseline/Extended frame, or None: the checks libjpeg only warns about."""
    end = len(frame)
    if not frame.endswith(b"\xff\xd9"):
        # A fragment is padded to an even length: with 0x00, or by some encoders with 0xFF
        # (a fill byte, which JPEG allows before any marker, and after EOI is only padding).
        end = len(frame.rstrip(b"\0\xff"))  # never strips the EOI's own 0xFF: 0xD9 follows it
        if end < 2 or not frame.startswith(b"\xff\xd9", end - 2):
            return "truncated JPEG frame: it does not end with the end-of-image marker (the file was cut or overwritten)"
    if not frame.startswith(b"\xff\xd8"):
        return "corrupt JPEG frame: it does not start with the start-of-image marker"
    corrupt = "corrupt JPEG frame: "
    pos, sof = 2, None
    while True:  # the marker segments before the compressed data: tables, frame header, scan header
        if pos + 4 > end:
            return corrupt + "its header ends before the compressed data"
        if frame[pos] != 0xFF:
            return corrupt + f"no marker at byte {pos} of its header"
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            return corrupt + f"unexpected marker FF{marker:02X} in its header"
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return corrupt + f"the segment of marker FF{marker:02X} runs past the frame"
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if sof is not None:
                return corrupt + "it has two frame headers"
            if marker not in (0xC0, 0xC1) or length < 11:
                return corrupt + f"frame header FF{marker:02X} is not a sequential (Baseline or Extended) one"
            sof = marker
            precision, components = frame[pos + 4], frame[pos + 9]
            height, width = int.from_bytes(frame[pos + 5 : pos + 7], "big"), int.from_bytes(frame[pos + 7 : pos + 9], "big")
            allowed = (8,) if header.transfer_syntax == JPEGBaseline8Bit else (8, 12)
            if precision not in allowed or not 1 <= header.bits_stored <= precision:
                kind = "8-bit" if allowed == (8,) else "8- or 12-bit"
                return corrupt + (f"{precision}-bit samples and BitsStored {header.bits_stored}; "
                                  f"{header.transfer_syntax.name} holds {kind} samples")
            if components != 1:
                return corrupt + f"{components} colour components, but the header says greyscale"
            if (height, width) != (header.rows, header.columns):
                shape = f"{header.rows} x {header.columns}"
                return corrupt + f"{height} x {width} pixels, but the header says Rows x Columns = {shape}"
        elif marker == 0xDA:  # start of scan: the compressed data follows its header
            if sof is None:
                return corrupt + "compressed data before any frame header"
            pos += 2 + length
            break
        pos += 2 + length
    # Inside the compressed data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart
    # marker or another 0xFF (fill); any other marker means bytes were overwritten or inserted,
    # which libjpeg would decode as grey or garbage without an error.
    # Every 8 x 8 block takes at least two Huffman codes (its DC difference and an end-of-block),
    # at least 2 bits: less data than that cannot be the image (the decoder would fill it in with grey).
    blocks = -(-header.rows // 8) * -(-header.columns // 8)
    if 4 * (end - 2 - pos) < blocks:
        shape = f"{header.rows} x {header.columns}"
        return corrupt + f"{max(end - 2 - pos, 0):,} bytes of compressed data cannot hold {shape} pixels"
    data = np.frombuffer(frame, np.uint8, count=end)
    follower = data[np.flatnonzero(data[pos : end - 2] == 0xFF) + (pos + 1)]  # up to the 0xFF of the final EOI
    wrong = (follower != 0x00) & (follower != 0xFF) & ((follower < 0xD0) | (follower > 0xD7))
    if wrong.any():
        marker = int(follower[wrong.argmax()])
        return corrupt + f"marker FF{marker:02X} inside the compressed data (bytes overwritten or inserted)"
    return None


def _draft_decode(frame: bytes, size: int) -> np.ndarray | None:
    """The fast path for a checked 8-bit JPEG Baseline frame; None when Pillow fails (the caller decodes plainly)."""
    try:
        jpeg = Image.open(io.BytesIO(frame), formats=("JPEG",))
        # Stop the DCT downscale above the target, never at it: the final antialiased
        # resize then smooths like the plain path's (DCT scaling exactly to size is a
        # box filter over 8x8 blocks, which drifts by about a grey level on grainy films).
        jpeg.draft("L", (size + 1, size + 1))
        return np.asarray(jpeg.convert("L").resize((size, size), Image.BILINEAR))
    except Exception:
        return None  # let the plain path decode it or report the error


def _describe(exc: BaseException) -> str:
    """An exception as one short line for a DicomReadError reason."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    name = exc.__class__.__name__
    if name == "error":  # struct.error, zlib.error: name the module
        name = f"{exc.__class__.__module__}.error"
    return f"{name}: {text}" if text else name


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
