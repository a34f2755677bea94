"""Test DICOMs of every transfer syntax the reader supports, made here (nothing downloaded).

:func:`write_test_dicom` starts from the phantom's own writer (uncompressed, RSNA's
attributes), sets the attributes a test asks for (bit depth, signedness, window,
VOI LUT, rescale, Presentation LUT Shape, Modality, BodyPartExamined, spacing)
and compresses the pixels with pydicom's encoders (RLE: pydicom; JPEG-LS:
pyjpegls; JPEG 2000: pylibjpeg-openjpeg), Pillow (JPEG Baseline and 8-bit
Extended), or :func:`jpeg_lossless` below (pydicom has no JPEG Lossless encoder).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless,
)

from pneumonia.data.phantom.dicom_writer import write_dicom

# transfer syntax -> the stored bit depths it is tested with
SYNTAX_BITS: dict[UID, tuple[int, ...]] = {
    ExplicitVRLittleEndian: (8, 12, 16),
    ImplicitVRLittleEndian: (8, 12, 16),
    RLELossless: (8, 12, 16),
    JPEGBaseline8Bit: (8,),
    JPEGExtended12Bit: (8,),  # 12-bit: pydicom's bundled JPEG-lossy.dcm and JPGExtended.dcm (nothing here encodes it)
    JPEGLossless: (8, 12, 16),
    JPEGLosslessSV1: (8, 12, 16),
    JPEGLSLossless: (8, 12, 16),
    JPEGLSNearLossless: (8, 12, 16),
    JPEG2000Lossless: (8, 12, 16),
    JPEG2000: (8, 12, 16),
}
LOSSLESS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLossless, JPEGLosslessSV1,
            JPEGLSLossless, JPEG2000Lossless}  # fmt: skip


def film(size: int = 64, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth film-like test image with texture, ``size`` x ``size``, spanning most of ``bits`` bits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 0.15 + 0.6 * x + 0.2 * np.sin(6 * y) ** 2 + 0.03 * rng.standard_normal((size, size))
    top = 2**bits - 1
    return np.clip(np.rint(base * top), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)


def write_test_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    syntax: UID = ExplicitVRLittleEndian,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,  # (center, width)
    voi_function: str | None = None,  # LINEAR, LINEAR_EXACT, SIGMOID
    voi_lut: np.ndarray | None = None,  # a VOI LUT Sequence item's data, first value mapped 0, 16 bits
    rescale: tuple[float, float] | None = None,  # (slope, intercept)
    presentation_shape: str | None = None,
    modality: str | None = "CR",
    body_part: str | None = "CHEST",
    pixel_spacing: float | str | None = 0.143,
    imager_spacing: float | None = None,
    patient_id: str = "t",
) -> Path:
    """Write one single-frame greyscale DICOM; ``pixels`` as stored (int16 when ``signed``)."""
    pixels = np.asarray(pixels)
    bits = bits_stored or (8 if pixels.dtype.itemsize == 1 else 16)
    carrier = np.zeros(pixels.shape, np.uint8 if bits <= 8 else np.uint16)
    write_dicom(path, carrier, patient_id=patient_id, jpeg=False, photometric=photometric, bits_stored=bits)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = int(signed)
    dtype = ("<i2" if signed else "<u2") if bits > 8 else ("i1" if signed else "u1")
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    for keyword, value in (("Modality", modality), ("BodyPartExamined", body_part),
                           ("PresentationLUTShape", presentation_shape), ("VOILUTFunction", voi_function)):
        if value is None:
            delattr(ds, keyword) if keyword in ds else None
        else:
            setattr(ds, keyword, value)
    if pixel_spacing is None:
        del ds.PixelSpacing
    else:
        with pydicom.config.disable_value_validation():
            ds.PixelSpacing = [str(pixel_spacing), str(pixel_spacing)]
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = [str(imager_spacing), str(imager_spacing)]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if voi_lut is not None:
        item = pydicom.Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = [int(v) for v in voi_lut]
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = [item]
    _encode(ds, pixels, UID(syntax), bits)
    ds.save_as(path, enforce_file_format=True)
    return path


def _encode(ds: pydicom.Dataset, pixels: np.ndarray, syntax: UID, bits: int) -> None:
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        return
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):  # Pillow: 8-bit sequential JPEG
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=95)
        frame = buffer.getvalue()
    elif syntax in (JPEGLossless, JPEGLosslessSV1):
        # Signed values go in as their two's-complement bit pattern; the decoder signs them again.
        frame = jpeg_lossless(pixels.astype(np.int64) & ((1 << bits) - 1), max(bits, 2))
    else:
        options = {"pydicom": {}, "pyjpegls": {}, "pylibjpeg": {}}
        plugin = {RLELossless: "pydicom", JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls",
                  JPEG2000Lossless: "pylibjpeg", JPEG2000: "pylibjpeg"}[syntax]  # fmt: skip
        kwargs = {JPEGLSNearLossless: {"jls_error": 2}, JPEG2000: {"j2k_cr": [8]}}.get(syntax, {})
        ds.compress(syntax, pixels, encoding_plugin=plugin, generate_instance_uid=False, **options[plugin], **kwargs)
        return
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax


def jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """A JPEG Lossless (Process 14, selection value 1) frame of a greyscale image: nothing installed encodes one.

    Prediction from the pixel to the left (first row: left; first column: above;
    first pixel: 2**(precision-1)); differences modulo 2**16, Huffman-coded with
    one table giving every category 0..16 a 5-bit code; 0xFF bytes stuffed.
    """
    rows, cols = pixels.shape
    pred = np.empty_like(pixels)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = pixels[0, :-1]
    pred[1:, 0] = pixels[:-1, 0]
    pred[1:, 1:] = pixels[1:, :-1]
    diff = (pixels - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    bits: list[str] = []
    for d in diff.ravel().tolist():
        category = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(category, "05b"))
        if 0 < category < 16:
            bits.append(format(d if d > 0 else (d - 1) & ((1 << category) - 1), f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, no point transform
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(data) + b"\xff\xd9"
