"""Reading chest X-ray DICOMs into the arrays the model sees.

Pixels are scaled to [0, 1] by the largest value their stored bits allow
(``value / (2**BitsStored - 1)``: 255 for the 8-bit RSNA files, 4095 for 12-bit,
65535 for 16-bit), MONOCHROME1 is inverted so that bone is bright, and the image
is resized to ``size`` x ``size`` and stored as uint8 (value/255). A non-square
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
  Columns, BitsAllocated 8 or 16, 1 <= BitsStored <= BitsAllocated, unsigned
  pixels, SamplesPerPixel, NumberOfFrames, PhotometricInterpretation, a positive
  PixelSpacing), or an image of more than :data:`MAX_PIXELS` pixels, so a damaged
  header cannot make the reader allocate gigabytes;
* a file cut short, or with bytes after its last element (pydicom silently
  drops what it cannot read);
* a deflated data set (pydicom inflates it whole, without a size limit);
* uncompressed pixel data whose length is not Rows x Columns x BitsAllocated/8
  (one padding byte allowed), and compressed pixel data whose items do not fill
  it exactly: a cut file, or bytes lost or inserted, would otherwise give a
  shifted image;
* a JPEG Baseline (or Extended) frame that is not well formed: it must start
  with SOI, hold one 8-bit greyscale sequential frame of the header's Rows x
  Columns and one scan with no marker inside the compressed data, and end with
  EOI. A truncated frame is refused, never filled in with grey.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit
from PIL import Image

from pneumonia.errors import DicomReadError

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
    pixel_spacing_mm: float | None  # row spacing in mm, when the file declares PixelSpacing


@dataclass(frozen=True)
class _Header:
    """The header values the reader uses, parsed and checked."""

    transfer_syntax: UID
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    monochrome1: bool
    info: DicomInfo


def read_dicom(path: str | Path, size: int, fast: bool = True) -> tuple[np.ndarray, DicomInfo]:
    """Return the image as a ``size`` x ``size`` uint8 array (value = intensity*255) and its header facts.

    Raises :class:`DicomReadError` naming the file for anything that is not a
    single-frame greyscale DICOM image, including truncated and damaged files.
    """
    ds = _open(path)
    header = _header(ds, path)
    data = _pixel_data(ds, path)
    if header.transfer_syntax.is_encapsulated:
        frame = _single_frame(data, path)
        if header.transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):  # what Pillow (libjpeg) decodes
            problem = _jpeg_problem(frame, header)
            if problem:
                raise DicomReadError(path, f"{problem}; {_REPLACE}")
        if header.transfer_syntax == JPEGBaseline8Bit:
            if fast and 2 * size <= min(header.rows, header.columns):
                image = _draft_decode(frame, size)
                if image is not None:
                    return (255 - image if header.monochrome1 else image), header.info
    else:
        _check_length(data, header, path)

    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom and its decoders raise many types for damaged data
        raise DicomReadError(
            path, f"pixel data cannot be decoded ({_describe(exc)}); the file is damaged or compressed "
            "in a way no installed decoder reads: replace it with a good (or uncompressed) copy"
        ) from None  # fmt: skip
    if pixels.shape != (header.rows, header.columns):
        raise DicomReadError(
            path, f"decoded image has shape {pixels.shape}, not Rows x Columns = {header.rows} x "
            f"{header.columns}; {_REPLACE}"
        )  # fmt: skip

    # In place: one float32 copy of the image at a time (the same arithmetic, step by step).
    scaled = pixels.astype(np.float32)
    scaled /= float(2**header.bits_stored - 1)
    if header.monochrome1:
        np.subtract(1.0, scaled, out=scaled)
    scaled *= 255.0
    image = np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)
    if image.shape != (size, size):
        # Pillow's bilinear filter antialiases when shrinking, unlike a plain bilinear sample.
        # A non-square image is stretched: each axis is resized by its own factor.
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return image, header.info


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
        raise DicomReadError(path, "not a DICOM file (no DICM header); replace it with the original or remove it") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise DicomReadError(path, f"corrupt DICOM ({_describe(exc)}); {_REPLACE}") from None
    if "PixelData" not in ds:
        raise DicomReadError(path, _why_no_pixel_data(ds, len(data)))
    _check_end(ds, len(data), path)
    return ds


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
        raise DicomReadError(path, f"multi-frame DICOM ({frames} frames); only single images are supported")
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
    if bits_allocated not in (8, 16):
        raise bad("BitsAllocated", bits_allocated, "not 8 or 16")
    bits_stored = number("BitsStored")
    if not 1 <= bits_stored <= bits_allocated:
        raise bad("BitsStored", bits_stored, f"not between 1 and BitsAllocated ({bits_allocated})")
    signed = number("PixelRepresentation", 0)
    if signed == 1:
        raise DicomReadError(path, "signed pixel data (PixelRepresentation 1) is not supported; export the image unsigned")
    if signed != 0:
        raise bad("PixelRepresentation", signed, "not 0 (unsigned) or 1 (signed)")

    return _Header(
        transfer_syntax=syntax,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        monochrome1=photometric == "MONOCHROME1",
        info=DicomInfo(
            view=_str(get("ViewPosition")),
            sex=_str(get("PatientSex")),
            age=_age(get("PatientAge", "")),
            rows=rows,
            columns=columns,
            pixel_spacing_mm=_spacing(get("PixelSpacing"), bad),
        ),
    )


def _str(value) -> str:
    return "" if value is None else str(value)


def _age(value) -> int | None:
    """Years from "51" (RSNA's form) or "051Y"; None when absent or not a plain number."""
    age = str(value).rstrip("YMWD")
    return int(age) if age.isascii() and age.isdigit() else None


def _spacing(value, bad) -> float | None:
    if value is None or value == "":
        return None
    first = value[0] if isinstance(value, (list, MultiValue)) else value
    try:
        spacing = float(first)
    except (TypeError, ValueError):
        raise bad("PixelSpacing", first, "not a number of mm") from None
    if not (math.isfinite(spacing) and spacing > 0):
        raise bad("PixelSpacing", first, "not a positive number of mm")
    return spacing


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
    """Uncompressed pixel data must hold exactly Rows x Columns pixels (plus one padding byte to an even length)."""
    need = header.rows * header.columns * (header.bits_allocated // 8)
    if len(data) == need or (need % 2 and len(data) == need + 1):
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
    """What is structurally wrong with an 8-bit JPEG frame, or None: the checks libjpeg only warns about."""
    end = len(frame)
    if not frame.endswith(b"\xff\xd9"):
        end = len(frame.rstrip(b"\0"))  # a fragment is padded to an even length
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
                return corrupt + f"frame header FF{marker:02X} is not an 8-bit sequential (Baseline) one"
            sof = marker
            precision, components = frame[pos + 4], frame[pos + 9]
            height, width = int.from_bytes(frame[pos + 5 : pos + 7], "big"), int.from_bytes(frame[pos + 7 : pos + 9], "big")
            if precision != 8 or header.bits_stored != 8:
                return corrupt + f"{precision}-bit samples and BitsStored {header.bits_stored}; only 8-bit JPEG is read"
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
