"""Every transfer syntax, bit depth and LUT kind the reader supports, against pydicom's own reference path.

Files come from tests/dicom_writer.py (made here with pydicom's encoders, Pillow
and a small JPEG Lossless encoder) and from the test files bundled in pydicom's
wheel (``pydicom.data.get_testdata_file``, never downloaded). Each row of the table in
docs/dicom-support.md names the test here that backs it.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, RLELossless, UID

from dicom_writer import LOSSLESS, SYNTAX_BITS, film, write_test_dicom
from pneumonia.data.dicom.chest import chest_problem
from pneumonia.data.dicom.read import read_dicom
from pneumonia.core.errors import DicomReadError


def reference(ds: pydicom.Dataset, size: int, windowing: str = "auto") -> np.ndarray:
    """pydicom's path, written out: pixel_array -> Modality LUT -> VOI LUT -> inversion -> [0, 255] -> resize.

    The [0, 1] range is the standard's (PS3.3 C.11.2.1.2): the stored range, through the
    rescale; 0 .. 2**n - 1 for a VOI LUT Sequence of n-bit entries.
    """
    stored = ds.pixel_array
    bits, signed = ds.BitsStored, ds.PixelRepresentation == 1
    low = -(2 ** (bits - 1)) if signed else 0
    high = low + 2**bits - 1
    values = stored.astype(np.float64)
    windowed = windowing == "auto" and ("VOILUTSequence" in ds or "WindowCenter" in ds)
    if windowed:
        if "VOILUTSequence" in ds:
            values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
            low, high = 0, 2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
        else:
            values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            low, high = low * slope + intercept, high * slope + intercept
    scaled = (values - low) / (high - low)
    shape = str(ds.get("PresentationLUTShape", "")).strip()
    if ds.PhotometricInterpretation == "MONOCHROME1" or (windowing == "auto" and shape == "INVERSE"):
        scaled = 1 - scaled
    image = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return image


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def read_quietly(path, size, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some of its own test files' quirks
        return read_dicom(path, size, **kwargs)


# --------------------------------------------------------------------------- every transfer syntax, made here

CASES = [(syntax, bits) for syntax, depths in SYNTAX_BITS.items() for bits in depths]


@pytest.mark.parametrize("syntax,bits", CASES, ids=[f"{UID(s).keyword}-{b}bit" for s, b in CASES])
def test_every_transfer_syntax_decodes_as_pydicom_renders_it(tmp_path, syntax, bits):
    pixels = film(64, bits)
    path = write_test_dicom(tmp_path / "f.dcm", pixels, syntax=syntax, bits_stored=bits)
    image, info = read_dicom(path, 64)
    assert image.dtype == np.uint8 and (info.rows, info.columns) == (64, 64)
    assert mae(image, reference(pydicom.dcmread(path), 64)) <= 1.0
    if syntax in LOSSLESS:  # and the decoder gave back exactly what was stored
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, pixels)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLossless, UID("1.2.840.10008.1.2.4.80"),
                                    UID("1.2.840.10008.1.2.4.90")])
def test_signed_pixels_through_their_rescale_and_window(tmp_path, syntax):
    stored = film(64, 12).astype(np.int16) - 2048  # -2048 .. 2047
    path = write_test_dicom(tmp_path / "s.dcm", stored, syntax=syntax, bits_stored=12, signed=True,
                            rescale=(2, 100), window=(100, 2000))  # window in rescaled units: stored -500 .. 500
    image, _ = read_dicom(path, 64)
    assert mae(image, reference(pydicom.dcmread(path), 64)) <= 1.0
    assert image[stored <= -500].max() == 0 and image[stored >= 500].min() == 255
    plain, _ = read_dicom(path, 64, windowing="none")  # the stored range, shifted: -2048 is black
    assert mae(plain, np.rint((stored.astype(float) + 2048) / 4095 * 255)) <= 0.5


# --------------------------------------------------------------------------- pydicom's bundled files

BUNDLED = [
    "CT_small.dcm",  # signed 16-bit, rescale, no window
    "MR_small.dcm",  # signed 16-bit with a window
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_padded.dcm",  # zero bytes after the pixel data
    "JPGExtended.dcm",  # 12-bit JPEG Extended whose frame ends EOI + 0xFF
    "JPEG2000.dcm",  # signed 16-bit JPEG 2000
    "693_J2KI.dcm",  # signed 14-bit JPEG 2000 with rescale and window
    "J2K_pixelrep_mismatch.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "examples_overlay.dcm",  # 12-bit, window, non-square
]


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("windowing", ["auto", "none"])
def test_pydicom_bundled_files_render_as_pydicom_does(name, windowing):
    path = get_testdata_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        expected = reference(ds, 64, windowing)
    image, _ = read_quietly(path, 64, windowing=windowing)
    assert mae(image, expected) <= 1.0


def test_12_bit_jpeg_with_a_pad_byte_after_eoi_is_not_truncated(tmp_path):
    from pydicom.encaps import encapsulate, generate_frames

    source = get_testdata_file("JPGExtended.dcm")
    ds = pydicom.dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.endswith(b"\xff\xd9\xff")  # EOI, then one 0xFF to an even length
    image, info = read_dicom(source, 128)
    assert (info.rows, info.columns) == (1024, 256) and image.max() > 0
    # The same frame cut short is still truncated.
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(DicomReadError, match="truncated JPEG frame"):
        read_dicom(tmp_path / "cut.dcm", 128)


def test_jpeg_that_the_installed_decoder_rejects_is_not_called_damaged_alone():
    # pydicom's JPEG-lossy.dcm has a scan header libjpeg refuses (GDCM reads it): the reason says both.
    with pytest.raises(DicomReadError) as caught:
        read_quietly(get_testdata_file("JPEG-lossy.dcm"), 64)
    assert "damaged, or encoded in a way the installed decoders (pillow, pylibjpeg) reject" in caught.value.reason


# --------------------------------------------------------------------------- windows and LUTs

GRADIENT = np.tile(np.linspace(0, 4095, 64), (64, 1)).round().astype(np.uint16)


def windowed(tmp_path, **kwargs) -> np.ndarray:
    path = write_test_dicom(tmp_path / "w.dcm", GRADIENT, bits_stored=12, **kwargs)
    image, _ = read_dicom(path, 64)
    assert mae(image, reference(pydicom.dcmread(path), 64)) <= 1.0
    return image[0]


def test_linear_window_gives_the_expected_contrast(tmp_path):
    row = windowed(tmp_path, window=(2000, 1000))  # 1500 .. 2500 spans black .. white
    assert row[GRADIENT[0] <= 1500].max() == 0 and row[GRADIENT[0] >= 2500].min() == 255
    middle = np.argmin(np.abs(GRADIENT[0].astype(int) - 2000))
    assert abs(int(row[middle]) - 128) <= 4
    plain, _ = read_dicom(tmp_path / "w.dcm", 64, windowing="none")  # the window ignored
    assert mae(plain[0], np.rint(GRADIENT[0] / 4095 * 255)) == 0


def test_linear_exact_and_sigmoid_windows(tmp_path):
    exact = windowed(tmp_path, window=(2000, 1000), voi_function="LINEAR_EXACT")
    assert exact[GRADIENT[0] <= 1500].max() == 0 and exact[GRADIENT[0] >= 2500].min() == 255
    sigmoid = windowed(tmp_path, window=(2000, 1000), voi_function="SIGMOID")
    assert np.all(np.diff(sigmoid.astype(int)) >= 0)
    # PS3.3 C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w)); at the window's edge 1 / (1 + e**-2) = 0.88, not 1.
    edge, center = (np.argmin(np.abs(GRADIENT[0].astype(int) - v)) for v in (2500, 2000))
    expected = 255 / (1 + np.exp(-4 * (GRADIENT[0].astype(float) - 2000) / 1000))
    assert abs(int(sigmoid[edge]) - expected[edge]) <= 1 and abs(int(sigmoid[center]) - expected[center]) <= 1


def test_voi_lut_sequence(tmp_path):
    lut = np.clip((np.arange(4096) - 1000) * 32, 0, 65535)  # 16-bit entries: black below 1000, white from ~3048
    row = windowed(tmp_path, voi_lut=lut, window=(100, 10))  # the sequence wins over the window
    assert row[GRADIENT[0] <= 1000].max() == 0 and row[GRADIENT[0] >= 3100].min() == 255


def test_monochrome1_and_presentation_lut_shape_invert_once(tmp_path):
    normal = windowed(tmp_path, window=(2000, 4000))
    assert np.array_equal(windowed(tmp_path, window=(2000, 4000), photometric="MONOCHROME1"), 255 - normal)
    assert np.array_equal(windowed(tmp_path, window=(2000, 4000), presentation_shape="INVERSE"), 255 - normal)
    both = windowed(tmp_path, window=(2000, 4000), photometric="MONOCHROME1", presentation_shape="INVERSE")
    assert np.array_equal(both, 255 - normal)  # DX's required pairing: one inversion, not two
    assert np.array_equal(windowed(tmp_path, window=(2000, 4000), presentation_shape="IDENTITY"), normal)


def test_rescale_moves_the_window_into_modality_units(tmp_path):
    row = windowed(tmp_path, rescale=(0.5, -1000), window=(0, 500))  # modality -250 .. 250 = stored 1500 .. 2500
    assert row[GRADIENT[0] <= 1500].max() == 0 and row[GRADIENT[0] >= 2500].min() == 255


def test_a_window_that_is_not_one_is_refused_with_the_way_out(tmp_path):
    path = write_test_dicom(tmp_path / "w0.dcm", GRADIENT, bits_stored=12, window=(2000, 0), voi_function="SIGMOID")
    with pytest.raises(DicomReadError) as caught:
        read_dicom(path, 64)
    assert caught.value.reason == (
        "its window (WindowCenter 2000, WindowWidth 0) is not a window; replace the file, or set "
        "dicom_to_npy.windowing: none to ignore the window it declares"
    )
    image, _ = read_dicom(path, 64, windowing="none")
    assert image[0, -1] == 255


# --------------------------------------------------------------------------- RSNA's files are unchanged

# sha256 of the arrays below as read by the code before windowing and the decoder plugins
# (commit b7d36db, Pillow the only JPEG decoder). Recompute: run that commit's read_dicom on phantom_files()
# with the pylibjpeg modules hidden (sys.modules[name] = None); redone when the phantom's pixels changed.
BEFORE_PLUGINS_SHA256 = "10af90104cf0ab0f1527264c44a443629da167c073a7244831193e7b854aa546"


def phantom_files(folder):
    from pneumonia.data.phantom.dicom_writer import write_dicom
    from pneumonia.data.phantom.patients import draw_patients
    from pneumonia.data.phantom.render import render

    paths = []
    for i, patient in enumerate(draw_patients(4, seed=7)):
        pixels = render(patient, 256).pixels
        for kind, kwargs in (("jpeg", {}), ("jpeg_m1", {"photometric": "MONOCHROME1"}), ("raw", {"jpeg": False})):
            paths.append(folder / f"{i}_{kind}.dcm")
            write_dicom(paths[-1], pixels, patient_id=f"p{i}", **kwargs)
        paths.append(folder / f"{i}_12.dcm")
        write_dicom(paths[-1], pixels.astype(np.uint16) * 16, patient_id=f"q{i}", jpeg=False, bits_stored=12)
    return paths


def test_rsna_style_files_convert_byte_identically_to_the_code_before_windowing(tmp_path):
    paths = phantom_files(tmp_path)
    for windowing in ("auto", "none"):
        digest = hashlib.sha256()
        for path in paths:
            for size, fast in ((64, True), (128, True), (256, False), (100, False)):  # the DCT fast path and the plain one
                digest.update(read_dicom(path, size, fast=fast, windowing=windowing)[0].tobytes())
        assert digest.hexdigest() == BEFORE_PLUGINS_SHA256, windowing


def test_jpeg_baseline_is_decoded_by_pillow_even_with_pylibjpeg_installed(tmp_path, monkeypatch):
    path = write_test_dicom(tmp_path / "b.dcm", film(64, 8), syntax=JPEGBaseline8Bit)
    assert "pylibjpeg" in get_decoder(JPEGBaseline8Bit).available_plugins
    chosen = []
    original = pydicom.Dataset.pixel_array_options

    def spy(self, **kwargs):
        chosen.append(kwargs.get("decoding_plugin"))
        return original(self, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "pixel_array_options", spy)
    read_dicom(path, 64)
    assert chosen == ["pillow"]


# --------------------------------------------------------------------------- refusals that say what to do


def test_a_codec_no_installed_plugin_decodes_names_the_syntax_and_the_packages(tmp_path, monkeypatch):
    path = write_test_dicom(tmp_path / "l.dcm", film(64, 12), syntax=JPEGLossless, bits_stored=12)
    decoder = get_decoder(JPEGLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"gdcm": ("gdcm>=3.0.10",),
                                                  "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(DicomReadError) as caught:
        read_dicom(path, 64)
    assert caught.value.reason == (
        "JPEG Lossless, Non-Hierarchical (Process 14) (1.2.840.10008.1.2.4.57) pixel data, which no installed decoder "
        "plugin reads; install one (gdcm - requires gdcm>=3.0.10; pylibjpeg - requires pylibjpeg>=2.0 and "
        "pylibjpeg-libjpeg>=2.1) or export the image uncompressed"
    )


def test_a_transfer_syntax_pydicom_cannot_decode(tmp_path):
    path = write_test_dicom(tmp_path / "v.dcm", film(64, 8), syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"v.dcm: MPEG2 Main Profile / Main Level \(1.2.840.10008.1.2.4.100\) pixel "
                                             r"data: pydicom has no decoder for this transfer syntax; export"):
        read_dicom(path, 64)


def test_pixel_spacing_zero_or_unparsable_is_unknown_not_a_refusal(tmp_path):
    for value in ("0.000", "0.1x3"):
        path = write_test_dicom(tmp_path / "z.dcm", film(64, 8), pixel_spacing="0.000")
        path.write_bytes(path.read_bytes().replace(b"0.000\\0.000", value.encode() + b"\\0.000"))
        image, info = read_dicom(path, 64)
        assert info.pixel_spacing_mm is None
        assert info.pixel_spacing_note.startswith(f"PixelSpacing '{value}' is not a positive number of mm")
        assert info.pixel_spacing_note.endswith("; area in mm² unknown")
    path = write_test_dicom(tmp_path / "i.dcm", film(64, 8), pixel_spacing="0", imager_spacing=0.2)
    _, info = read_dicom(path, 64)
    assert info.pixel_spacing_mm == pytest.approx(0.2)
    assert info.pixel_spacing_note == (
        "PixelSpacing '0' is not a positive number of mm; ImagerPixelSpacing used (at the detector plane, so areas "
        "include the X-ray magnification)"
    )
    path = write_test_dicom(tmp_path / "n.dcm", film(64, 8), pixel_spacing=None, imager_spacing=0.15)
    assert read_dicom(path, 64)[1].pixel_spacing_mm == pytest.approx(0.15)
    path = write_test_dicom(tmp_path / "none.dcm", film(64, 8), pixel_spacing=None)
    _, info = read_dicom(path, 64)
    assert info.pixel_spacing_mm is None and info.pixel_spacing_note == ""  # absent: unknown, nothing wrong


def test_a_file_without_preamble_is_read_when_it_is_an_image(tmp_path):
    path = write_test_dicom(tmp_path / "p.dcm", film(64, 12), bits_stored=12, window=(2000, 3000))
    full, _ = read_dicom(path, 64)
    data = path.read_bytes()
    (tmp_path / "nopreamble.dcm").write_bytes(data[132:])  # file meta group kept, no preamble and no "DICM"
    assert np.array_equal(read_dicom(tmp_path / "nopreamble.dcm", 64)[0], full)
    ds = pydicom.dcmread(path)
    del ds.file_meta  # a bare data set, as old exporters wrote it (Explicit VR Little Endian)
    ds.preamble = None
    ds.save_as(tmp_path / "bare.dcm", enforce_file_format=False)
    assert not (tmp_path / "bare.dcm").read_bytes()[128:132] == b"DICM"
    assert np.array_equal(read_dicom(tmp_path / "bare.dcm", 64)[0], full)


def test_a_file_without_header_or_image_is_no_dicom():
    for name in ("no_meta.dcm", "ExplVR_LitEndNoMeta.dcm"):  # headerless data sets without pixel data
        with pytest.raises(DicomReadError) as caught:
            read_dicom(get_testdata_file(name), 64)
        assert caught.value.reason.startswith("not a DICOM file (no DICOM file header")


# --------------------------------------------------------------------------- the chest check


@pytest.mark.parametrize(
    "modality,body_part,problem",
    [
        ("CR", "CHEST", None),
        ("DX", "THORAX", None),
        ("DR", "PORTABLE CHEST", None),
        ("CR", "", None),  # a missing tag is no reason
        ("", "", None),
        ("DX", "ABDOMEN", "not a chest radiograph: BodyPartExamined=ABDOMEN"),
        ("CR", "LEG", "not a chest radiograph: BodyPartExamined=LEG"),
        ("CT", "CHEST", "not a chest radiograph: Modality=CT"),
        ("MR", "", "not a chest radiograph: Modality=MR"),
    ],
)
def test_chest_problem(tmp_path, modality, body_part, problem):
    path = write_test_dicom(tmp_path / "c.dcm", film(64, 8), modality=modality or None, body_part=body_part or None)
    _, info = read_dicom(path, 64)
    assert chest_problem(info) == problem


def test_12_bit_jpeg_extended_syntax_with_8_bit_frame_is_read(tmp_path):
    # The 8-bit process of the Extended syntax (what Pillow writes); 12-bit is pydicom's JPGExtended.dcm above.
    path = write_test_dicom(tmp_path / "e.dcm", film(64, 8), syntax=JPEGExtended12Bit)
    assert mae(read_dicom(path, 64)[0], reference(pydicom.dcmread(path), 64)) <= 1.0
