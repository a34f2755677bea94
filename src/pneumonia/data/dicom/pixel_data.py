"""The pixel data element checked before anything is decoded: its length, its single frame, a JPEG frame's structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGBaseline8Bit

from pneumonia.core.errors import DicomReadError
from pneumonia.data.dicom.header import Header
from pneumonia.data.dicom.reasons import REPLACE, describe


def read_pixel_data(ds: pydicom.Dataset, path: str | Path) -> bytes:
    try:
        data = ds.PixelData
    except Exception as exc:
        reason = f"corrupt DICOM: the pixel data element cannot be read ({describe(exc)}); {REPLACE}"
        raise DicomReadError(path, reason) from None
    if not isinstance(data, bytes):
        raise DicomReadError(path, f"corrupt DICOM: the pixel data element holds {type(data).__name__}, not bytes; {REPLACE}")
    return data


def single_frame(data: bytes, path: str | Path) -> bytes:
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
        raise DicomReadError(path, f"corrupt DICOM: the compressed pixel data is damaged ({problem}); {REPLACE}")
    return items[1] if len(items) == 2 else b"".join(items[1:])


def check_length(data: bytes, header: Header, path: str | Path) -> None:
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
        f"header); {REPLACE}"
    )  # fmt: skip


def jpeg_problem(frame: bytes, header: Header) -> str | None:
    """What is structurally wrong with a JPEG Baseline/Extended frame, or None: the checks libjpeg only warns about.

    SOI first; then the marker segments up to the scan, with one sequential frame
    header that agrees with ``header``; then compressed data long enough for the
    image and free of markers; EOI last (padding after it allowed).
    """
    try:
        end = _end_of_image(frame)
        start = _compressed_data_start(frame, end, header)
        _check_compressed_data(frame, start, end, header)
    except _Malformed as problem:
        return str(problem)
    return None


class _Malformed(Exception):
    """A JPEG frame's structural problem; the message is :func:`jpeg_problem`'s answer."""


_CORRUPT = "corrupt JPEG frame: "


def _end_of_image(frame: bytes) -> int:
    """Where the frame's data ends, its EOI included (before any padding); it must also start with SOI."""
    end = len(frame)
    if not frame.endswith(b"\xff\xd9"):
        # A fragment is padded to an even length: with 0x00, or by some encoders with 0xFF
        # (a fill byte, which JPEG allows before any marker, and after EOI is only padding).
        end = len(frame.rstrip(b"\0\xff"))  # never strips the EOI's own 0xFF: 0xD9 follows it
        if end < 2 or not frame.startswith(b"\xff\xd9", end - 2):
            raise _Malformed(
                "truncated JPEG frame: it does not end with the end-of-image marker (the file was cut or overwritten)"
            )
    if not frame.startswith(b"\xff\xd8"):
        raise _Malformed(_CORRUPT + "it does not start with the start-of-image marker")
    return end


def _compressed_data_start(frame: bytes, end: int, header: Header) -> int:
    """Where the compressed data starts, after the marker segments (tables, frame header, scan header), all checked."""
    pos, sof = 2, None
    while True:
        if pos + 4 > end:
            raise _Malformed(_CORRUPT + "its header ends before the compressed data")
        if frame[pos] != 0xFF:
            raise _Malformed(_CORRUPT + f"no marker at byte {pos} of its header")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            raise _Malformed(_CORRUPT + f"unexpected marker FF{marker:02X} in its header")
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            raise _Malformed(_CORRUPT + f"the segment of marker FF{marker:02X} runs past the frame")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if sof is not None:
                raise _Malformed(_CORRUPT + "it has two frame headers")
            _check_frame_header(frame[pos : pos + 2 + length], header)
            sof = marker
        elif marker == 0xDA:  # start of scan: the compressed data follows its header
            if sof is None:
                raise _Malformed(_CORRUPT + "compressed data before any frame header")
            return pos + 2 + length
        pos += 2 + length


def _check_frame_header(segment: bytes, header: Header) -> None:
    """A frame header (SOFn marker, length, fields) must be sequential, greyscale, of the header's size and depth."""
    marker, length = segment[1], len(segment) - 2
    if marker not in (0xC0, 0xC1) or length < 11:
        raise _Malformed(_CORRUPT + f"frame header FF{marker:02X} is not a sequential (Baseline or Extended) one")
    precision, components = segment[4], segment[9]
    height, width = int.from_bytes(segment[5:7], "big"), int.from_bytes(segment[7:9], "big")
    allowed = (8,) if header.transfer_syntax == JPEGBaseline8Bit else (8, 12)
    if precision not in allowed or not 1 <= header.bits_stored <= precision:
        kind = "8-bit" if allowed == (8,) else "8- or 12-bit"
        raise _Malformed(_CORRUPT + f"{precision}-bit samples and BitsStored {header.bits_stored}; "
                                    f"{header.transfer_syntax.name} holds {kind} samples")
    if components != 1:
        raise _Malformed(_CORRUPT + f"{components} colour components, but the header says greyscale")
    if (height, width) != (header.rows, header.columns):
        shape = f"{header.rows} x {header.columns}"
        raise _Malformed(_CORRUPT + f"{height} x {width} pixels, but the header says Rows x Columns = {shape}")


def _check_compressed_data(frame: bytes, pos: int, end: int, header: Header) -> None:
    """The compressed data, from ``pos`` to the EOI before ``end``: enough of it for the image, and no marker inside.

    Inside the compressed data a 0xFF byte is followed by 0x00 (a stuffed 0xFF), a restart
    marker or another 0xFF (fill); any other marker means bytes were overwritten or inserted,
    which libjpeg would decode as grey or garbage without an error.
    Every 8 x 8 block takes at least two Huffman codes (its DC difference and an end-of-block),
    at least 2 bits: less data than that cannot be the image (the decoder would fill it in with grey).
    """
    blocks = -(-header.rows // 8) * -(-header.columns // 8)
    if 4 * (end - 2 - pos) < blocks:
        shape = f"{header.rows} x {header.columns}"
        raise _Malformed(_CORRUPT + f"{max(end - 2 - pos, 0):,} bytes of compressed data cannot hold {shape} pixels")
    data = np.frombuffer(frame, np.uint8, count=end)
    follower = data[np.flatnonzero(data[pos : end - 2] == 0xFF) + (pos + 1)]  # up to the 0xFF of the final EOI
    wrong = (follower != 0x00) & (follower != 0xFF) & ((follower < 0xD0) | (follower > 0xD7))
    if wrong.any():
        marker = int(follower[wrong.argmax()])
        raise _Malformed(_CORRUPT + f"marker FF{marker:02X} inside the compressed data (bytes overwritten or inserted)")
