"""Writing a phantom radiograph as a DICOM file, byte for byte as pydicom would, with RSNA's attributes."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    sex: str = "M",
    age: int = 50,
    view: str = "PA",
    pixel_spacing: float = 0.143,
    jpeg: bool = True,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
) -> None:
    """Write one single-frame greyscale CR DICOM, with RSNA's attributes.

    ``pixels``: 2-D uint8 (``bits_stored`` <= 8) or uint16 (``bits_stored`` > 8).
    ``jpeg=True`` writes JPEG Baseline (quality 90, 8-bit only), like RSNA;
    ``jpeg=False`` writes uncompressed Explicit VR Little Endian.
    ``pixel_spacing`` is in mm per pixel. PatientAge is written as RSNA does, a
    plain number of years ("51"), not the standard "051Y". Every UID is derived
    from ``patient_id``, and the study date is RSNA's placeholder 19010101, so
    the same arguments always give the same bytes.

    The elements are encoded here (:func:`_element`) rather than through a
    pydicom Dataset, which took as long as the JPEG itself; the bytes are
    pydicom's, file meta included (tests/test_phantom.py compares them).
    """
    pixels = np.asarray(pixels)
    _check_pixels(path, pixels, jpeg, photometric, bits_stored)
    instance = _uid(patient_id, "instance")
    syntax, pixel_data = _pixel_data(pixels, jpeg, bits_stored)
    meta = b"".join(
        _element(tag, vr, value)
        for tag, vr, value in (
            (0x00020001, "OB", b"\0\1"),  # FileMetaInformationVersion
            (0x00020002, "UI", CR_IMAGE_STORAGE),  # MediaStorageSOPClassUID
            (0x00020003, "UI", instance),  # MediaStorageSOPInstanceUID
            (0x00020010, "UI", syntax),  # TransferSyntaxUID
            (0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),  # ImplementationClassUID
            (0x00020013, "SH", f"PYDICOM {'.'.join(pydicom.__version_info__)}"),  # ImplementationVersionName
        )
    )
    attributes = _attributes(
        pixels.shape, instance, patient_id=patient_id, sex=sex, age=age, view=view, pixel_spacing=pixel_spacing,
        photometric=photometric, bits_stored=bits_stored, jpeg=jpeg,
    )  # fmt: skip
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")  # preamble and prefix
        out.write(_element(0x00020000, "UL", len(meta)) + meta)  # the file meta group, after its length
        out.write(b"".join(_element(tag, vr, value) for tag, vr, value in attributes))
        out.write(pixel_data)


def _check_pixels(path: Path, pixels: np.ndarray, jpeg: bool, photometric: str, bits_stored: int) -> None:
    """Raise ValueError, naming ``path``, for pixels or options :func:`write_dicom` cannot write."""
    if pixels.ndim != 2:
        raise ValueError(f"{path}: pixels must be a 2-D greyscale array, got shape {pixels.shape}")
    want = np.uint8 if bits_stored <= 8 else np.uint16
    if pixels.dtype != want:
        raise ValueError(f"{path}: bits_stored={bits_stored} needs {np.dtype(want).name} pixels, got {pixels.dtype}")
    if bits_stored < 8 * pixels.itemsize and int(pixels.max(initial=0)) >= 2**bits_stored:  # else it cannot
        raise ValueError(f"{path}: pixel values reach {pixels.max()}, beyond bits_stored={bits_stored}")
    if jpeg and bits_stored != 8:
        raise ValueError(f"{path}: JPEG Baseline holds 8-bit pixels only; pass jpeg=False for bits_stored={bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")


def _uid(patient_id: str, kind: str) -> str:
    """The UID of ``kind`` (instance, study, series) for ``patient_id``: the same every time."""
    return generate_uid(entropy_srcs=[patient_id, kind])


def _pixel_data(pixels: np.ndarray, jpeg: bool, bits_stored: int) -> tuple[str, bytes]:
    """(transfer syntax, the encoded PixelData element): a JPEG Baseline frame (quality 90), or the native pixels."""
    if jpeg:
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        return JPEGBaseline8Bit, _element(0x7FE00010, "OB", encapsulate([buffer.getvalue()]), fragments=True)
    native = np.ascontiguousarray(pixels, dtype="<u2" if bits_stored > 8 else np.uint8).tobytes()
    return ExplicitVRLittleEndian, _element(0x7FE00010, "OW" if bits_stored > 8 else "OB", native)


def _attributes(
    shape: tuple[int, int],
    instance: str,
    *,
    patient_id: str,
    sex: str,
    age: int,
    view: str,
    pixel_spacing: float,
    photometric: str,
    bits_stored: int,
    jpeg: bool,
) -> list[tuple[int, str, str | int]]:
    """The data set's (tag, VR, value) before the pixel data, in tag order: RSNA's attributes."""
    spacing = f"{pixel_spacing:.6g}"
    attributes = [
        (0x00080005, "CS", "ISO_IR 100"),  # SpecificCharacterSet
        (0x00080016, "UI", CR_IMAGE_STORAGE),  # SOPClassUID
        (0x00080018, "UI", instance),  # SOPInstanceUID
        (0x00080020, "DA", "19010101"),  # StudyDate
        (0x00080030, "TM", "000000.00"),  # StudyTime
        (0x00080050, "SH", ""),  # AccessionNumber
        (0x00080060, "CS", "CR"),  # Modality
        (0x00080064, "CS", "WSD"),  # ConversionType
        (0x00080090, "PN", ""),  # ReferringPhysicianName
        (0x0008103E, "LO", f"view: {view}"),  # SeriesDescription
        (0x00100010, "PN", patient_id),  # PatientName
        (0x00100020, "LO", patient_id),  # PatientID
        (0x00100030, "DA", ""),  # PatientBirthDate
        (0x00100040, "CS", sex),  # PatientSex
        (0x00101010, "AS", str(age)),  # PatientAge, RSNA's "51" rather than the standard "051Y"
        (0x00180015, "CS", "CHEST"),  # BodyPartExamined
        (0x00185101, "CS", view),  # ViewPosition
        (0x0020000D, "UI", _uid(patient_id, "study")),  # StudyInstanceUID
        (0x0020000E, "UI", _uid(patient_id, "series")),  # SeriesInstanceUID
        (0x00200010, "SH", ""),  # StudyID
        (0x00200011, "IS", "1"),  # SeriesNumber
        (0x00200013, "IS", "1"),  # InstanceNumber
        (0x00200020, "CS", ""),  # PatientOrientation
        (0x00280002, "US", 1),  # SamplesPerPixel
        (0x00280004, "CS", photometric),  # PhotometricInterpretation
        (0x00280010, "US", shape[0]),  # Rows
        (0x00280011, "US", shape[1]),  # Columns
        (0x00280030, "DS", f"{spacing}\\{spacing}"),  # PixelSpacing, row and column
        (0x00280100, "US", 8 if bits_stored <= 8 else 16),  # BitsAllocated
        (0x00280101, "US", bits_stored),  # BitsStored
        (0x00280102, "US", bits_stored - 1),  # HighBit
        (0x00280103, "US", 0),  # PixelRepresentation
    ]
    if jpeg:
        attributes += [(0x00282110, "CS", "01"), (0x00282114, "CS", "ISO_10918_1")]  # LossyImageCompression(Method)
    return attributes


# Value representations whose length takes 4 bytes (after 2 reserved) in explicit VR little endian.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})


def _element(tag: int, vr: str, value: str | int | bytes, fragments: bool = False) -> bytes:
    """One data element in explicit VR little endian, as pydicom writes it.

    Text is encoded in ISO 8859-1 (the SpecificCharacterSet written) and padded
    to an even length, UIDs with a NUL, other text with a space; US and UL
    values are integers, OB and OW ones bytes (padded with a NUL). With
    ``fragments``, ``value`` is encapsulated pixel data, written with an
    undefined length and closed by a sequence delimiter.
    """
    if vr in ("US", "UL"):
        value = value.to_bytes(2 if vr == "US" else 4, "little")
    elif isinstance(value, str):
        value = value.encode("latin-1")
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW") else b" "
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + vr.encode()
    if fragments:
        return head + b"\0\0\xff\xff\xff\xff" + value + b"\xfe\xff\xdd\xe0\0\0\0\0"
    if vr in _LONG_VRS:
        return head + b"\0\0" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value
