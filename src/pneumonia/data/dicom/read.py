"""Reading a DICOM file into the uint8 image the model sees: :func:`read_dicom` and :func:`read_dicom_sizes`.

Opening refuses what pydicom would read wrongly or at any cost (a deflated data
set, bytes after the last element, a file cut short); the header and the pixel
data are checked before anything is decoded (:mod:`~pneumonia.data.dicom.header`,
:mod:`~pneumonia.data.dicom.pixel_data`); then the image is decoded and rendered
(:mod:`~pneumonia.data.dicom.rendering`), or, for 8-bit JPEG Baseline shrunk to
at most half its side, decoded by Pillow at a reduced size (the fast path).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
)
from PIL import Image

from pneumonia.core.errors import DicomReadError
from pneumonia.data.dicom.header import DicomInfo, Header, read_header
from pneumonia.data.dicom.pixel_data import check_length, jpeg_problem, read_pixel_data, single_frame
from pneumonia.data.dicom.reasons import REPLACE, describe
from pneumonia.data.dicom.rendering import (
    RenderingError, Windowing, declares_window, presentation_inverse, render_stored_range, render_windowed,
)

_DEFLATED = b"1.2.840.10008.1.2.1.99"


def read_dicom(
    path: str | Path, size: int, fast: bool = True, windowing: Windowing = "auto"
) -> tuple[np.ndarray, DicomInfo]:
    """Return the image as a ``size`` x ``size`` uint8 array (value = intensity*255) and its header facts.

    ``windowing``: ``auto`` shows a file through the window it declares (none
    declared: its stored range); ``none`` always uses the stored range (see
    :mod:`~pneumonia.data.dicom.rendering`). Raises :class:`DicomReadError` naming the file
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
    header = read_header(ds, path)
    data = read_pixel_data(ds, path)
    try:
        windowed = windowing == "auto" and declares_window(ds)
        # Presentation LUT Shape is part of the display pipeline; `none` keeps the old rule (MONOCHROME1 only).
        inverse = presentation_inverse(ds, header.monochrome1) if windowing == "auto" else header.monochrome1
    except RenderingError as exc:
        raise DicomReadError(path, f"{exc}; {REPLACE}") from None
    drafts = False
    if header.transfer_syntax.is_encapsulated:
        frame = single_frame(data, path)
        if header.transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
            problem = jpeg_problem(frame, header)
            if problem:
                raise DicomReadError(path, f"{problem}; {REPLACE}")
        drafts = header.transfer_syntax == JPEGBaseline8Bit and not windowed and not ds.get("PresentationLUTSequence")
    else:
        check_length(data, header, path)

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
            image = resize_square(full, size)
        images.append(image)
    return images, header.info


def resize_square(full: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image resized to ``size`` x ``size``; a non-square image is stretched, each axis by its own factor.

    Pillow's bilinear filter antialiases when shrinking, unlike a plain bilinear sample.
    """
    return full if full.shape == (size, size) else np.asarray(Image.fromarray(full).resize((size, size), Image.BILINEAR))


def _render(ds: pydicom.Dataset, header: Header, path: str | Path, windowed: bool, inverse: bool) -> np.ndarray:
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


def _decode(ds: pydicom.Dataset, header: Header, path: str | Path) -> np.ndarray:
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
            path, f"pixel data cannot be decoded ({describe(exc)}); the {syntax.name} data is damaged, or encoded "
            f"in a way the installed decoders ({tried}) reject: replace the file with a good copy, or export it "
            "uncompressed"
        ) from None  # fmt: skip
    if pixels.shape != (header.rows, header.columns):
        raise DicomReadError(
            path, f"decoded image has shape {pixels.shape}, not Rows x Columns = {header.rows} x "
            f"{header.columns}; {REPLACE}"
        )  # fmt: skip
    return pixels


def _open(path: str | Path) -> pydicom.Dataset:
    try:
        data = Path(path).read_bytes()  # parsing from memory is also faster than from the file
    except OSError as exc:
        reason = exc.strerror or describe(exc)
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
        raise DicomReadError(path, f"corrupt DICOM ({describe(exc)}); {REPLACE}") from None
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
            path, f"compressed pixel data, but no file meta header says how it is compressed (no TransferSyntaxUID); {REPLACE}"
        )  # fmt: skip
    implicit, little = ds.original_encoding
    if implicit is None:
        raise DicomReadError(path, f"the DICOM file meta header has no TransferSyntaxUID; {REPLACE}")
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
            f"read (bytes inserted, or a length damaged); {REPLACE}"
        )  # fmt: skip
    if end > size and last.tag != 0x7FE00010:  # short pixel data itself gets its own message, later
        raise DicomReadError(
            path, f"corrupt DICOM: element {last.tag} after the pixel data runs past the end of the file (bytes "
            f"inserted, a length damaged, or the file cut short); {REPLACE}"
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
