"""Reading real pydicom-written DICOMs: JPEG Baseline (as RSNA) and uncompressed."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from simd import baseline_environment, files_of, run_python

from pneumonia.data.phantom.dataset import generate
from pneumonia.data.dicom.read import read_dicom
from pneumonia.core.errors import DicomReadError
from pneumonia.data.phantom.dicom_writer import write_dicom


def gradient(size=64, high=255, dtype=np.uint8):
    row = np.linspace(0, high, size)
    return np.tile(row, (size, 1)).round().astype(dtype)


def test_jpeg_baseline_like_rsna(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, gradient(), patient_id="a", sex="F", age=61, view="AP", pixel_spacing=0.168)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    image, info = read_dicom(path, 64)
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert np.abs(image.astype(int) - gradient()).mean() < 2  # lossy JPEG, quality 90
    assert (info.view, info.sex, info.age, info.rows, info.columns) == ("AP", "F", 61, 64, 64)
    assert info.pixel_spacing_mm == pytest.approx(0.168)


def test_uncompressed_is_exact_and_resized_with_antialiasing(tmp_path):
    path = tmp_path / "b.dcm"
    pixels = np.zeros((64, 64), np.uint8)
    pixels[::2] = 255  # one-pixel stripes: a plain point sample would alias to all-0 or all-255
    write_dicom(path, pixels, patient_id="b", jpeg=False)
    full, _ = read_dicom(path, 64)
    np.testing.assert_array_equal(full, pixels)
    small, _ = read_dicom(path, 16)
    assert small.shape == (16, 16)
    assert abs(float(small.mean()) - 127.5) < 10


def test_monochrome1_is_inverted(tmp_path):
    path = tmp_path / "m1.dcm"
    write_dicom(path, gradient(), patient_id="m1", jpeg=False, photometric="MONOCHROME1")
    image, _ = read_dicom(path, 64)
    np.testing.assert_array_equal(image, 255 - gradient())


def test_12_bit_is_scaled_by_its_stored_bits(tmp_path):
    path = tmp_path / "b12.dcm"
    write_dicom(path, gradient(high=4095, dtype=np.uint16), patient_id="b12", jpeg=False, bits_stored=12)
    image, _ = read_dicom(path, 64)
    assert image[:, 0].max() == 0 and image[:, -1].min() == 255
    np.testing.assert_allclose(image, gradient(), atol=1)


def test_a_dcm_file_that_is_not_dicom(tmp_path):
    path = tmp_path / "note.dcm"
    path.write_text("this is a text file named .dcm")
    with pytest.raises(DicomReadError, match="note.dcm: not a DICOM file"):
        read_dicom(path, 32)


def test_dicom_without_pixel_data(tmp_path):
    path = tmp_path / "nopix.dcm"
    write_dicom(path, gradient(), patient_id="nopix", jpeg=False)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="no pixel data"):
        read_dicom(path, 32)


def test_fast_jpeg_path_stays_within_one_grey_level_of_the_plain_path(tmp_path):
    from pneumonia.data.phantom.patients import draw_patients
    from pneumonia.data.phantom.render import render

    # RSNA's 1024 films at the sizes people train on, and 512 films down to the 8x DCT limit.
    cases = [(1024, (224, 128, 64)), (512, (256, 128, 64))]
    for source, sizes in cases:
        for i, patient in enumerate(draw_patients(3, seed=1)):
            path = tmp_path / f"{source}_{i}.dcm"
            write_dicom(path, render(patient, source).pixels, patient_id=f"p{i}")
            for size in sizes:
                fast, info = read_dicom(path, size)
                plain, plain_info = read_dicom(path, size, fast=False)
                assert info == plain_info
                assert np.abs(fast.astype(int) - plain).mean() < 1.0, (source, size)


def test_fast_path_inverts_monochrome1(tmp_path):
    path = tmp_path / "m1.dcm"
    write_dicom(path, gradient(128), patient_id="m1", photometric="MONOCHROME1")
    fast, _ = read_dicom(path, 32)
    plain, _ = read_dicom(path, 32, fast=False)
    assert np.abs(fast.astype(int) - plain).mean() < 1.0
    assert fast[:, 0].mean() > 200  # black-to-white gradient, inverted


# --------------------------------------------------------------------------- more good files


def test_16_bit_is_scaled_by_its_16_stored_bits(tmp_path):
    path = tmp_path / "b16.dcm"
    pixels = gradient().astype(np.uint16) * 257  # value/(2**16-1)*255 is exactly the 8-bit gradient
    write_dicom(path, pixels, patient_id="b16", jpeg=False, bits_stored=16)
    image, info = read_dicom(path, 64)
    np.testing.assert_array_equal(image, gradient())
    assert (info.rows, info.columns) == (64, 64)


def wide_image():
    """48 rows x 96 columns: left half dark, right half bright, the bottom quarter of the right half grey."""
    pixels = np.zeros((48, 96), np.uint8)
    pixels[:, 48:] = 255
    pixels[36:, 48:] = 128
    return pixels


def test_non_square_image_is_stretched_per_axis_and_keeps_its_original_size(tmp_path):
    path = tmp_path / "wide.dcm"
    write_dicom(path, wide_image(), patient_id="wide", jpeg=False)
    image, info = read_dicom(path, 64)
    assert image.shape == (64, 64)
    assert (info.rows, info.columns) == (48, 96)  # the manifest scales boxes by 64/96 across, 64/48 down
    # Across, 96 -> 64 columns: the left half stays dark, the right half bright, split at column 32.
    assert image[:, :31].max() == 0 and image[:44, 33:].min() == 255
    # Down, 48 -> 64 rows: the grey band (rows 36-47 of 48) fills rows 48-63, the whole height is used.
    assert np.all(image[50:, 33:] == 128) and image[:46, 33:].min() == 255


def test_non_square_jpeg_fast_path_matches_the_plain_path(tmp_path):
    path = tmp_path / "wide.dcm"
    write_dicom(path, np.kron(wide_image(), np.ones((2, 2), np.uint8)), patient_id="wide")  # 96 x 192
    fast, info = read_dicom(path, 32)  # 2 * 32 <= 96: the draft path
    plain, plain_info = read_dicom(path, 32, fast=False)
    assert info == plain_info and (info.rows, info.columns) == (96, 192)
    assert np.abs(fast.astype(int) - plain).mean() < 1.0
    assert fast[:, :14].max() < 5 and fast[:20, 18:].min() > 250


# --------------------------------------------------------------------------- refused files


def refused(path, size=32, fast=True) -> str:
    """The reason read_dicom gives for refusing ``path`` (it must refuse with DicomReadError)."""
    with pytest.raises(DicomReadError) as caught:
        read_dicom(path, size, fast=fast)
    assert str(caught.value) == f"{path}: {caught.value.reason}" and "\n" not in str(caught.value)
    return caught.value.reason


def test_truncated_uncompressed_dicom_cut_in_the_pixel_data(tmp_path):
    path = tmp_path / "cut.dcm"
    write_dicom(path, gradient(), patient_id="cut", jpeg=False)
    path.write_bytes(path.read_bytes()[:-100])
    assert refused(path) == (
        "truncated DICOM: the pixel data holds 3,996 bytes, but Rows x Columns = 64 x 64 at 8 bits need 4,096; "
        "replace it with a complete copy"
    )


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_jpeg_dicom_cut_in_the_pixel_data(tmp_path):
    path = tmp_path / "cut.dcm"
    write_dicom(path, gradient(128), patient_id="cut")
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 100])  # inside the compressed frame
    for fast in (True, False):
        assert refused(path, fast=fast) == (
            "truncated or damaged DICOM: a value runs past the end of the file, so nothing after the file meta "
            "header can be read; replace it with a complete copy"
        )


def test_truncated_dicom_cut_in_the_header(tmp_path):
    path = tmp_path / "cut.dcm"
    write_dicom(path, gradient(), patient_id="cut", jpeg=False)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"CHEST") + 2])  # inside BodyPartExamined's value
    assert refused(path) == (
        "truncated or damaged DICOM: element (0018,0015) runs past the end of the file, before the pixel data; "
        "replace it with a complete copy"
    )


def jpeg_dicom_with_frame(path, edit):
    """A 128 x 128 JPEG Baseline DICOM whose frame is ``edit(frame)``, re-encapsulated so the DICOM is well formed."""
    from pydicom.encaps import encapsulate, generate_frames

    write_dicom(path, gradient(128), patient_id="j")
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([edit(frame)])
    ds.save_as(path)


def test_truncated_jpeg_frame_is_refused_not_filled_with_grey(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "half.dcm"
    jpeg_dicom_with_frame(path, lambda frame: frame[: len(frame) // 2])
    reason = (
        "truncated JPEG frame: it does not end with the end-of-image marker (the file was cut or overwritten); "
        "replace the file with a good copy"
    )
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for fast in (True, False):  # the draft path and pydicom's (Pillow) decoder
        assert refused(path, fast=fast) == reason
    # Even where another library lets Pillow fill truncated images in, the frame is refused.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for fast in (True, False):
        assert refused(path, fast=fast) == reason


def test_corrupt_jpeg_frame_bytes_overwritten_in_the_compressed_data(tmp_path):
    path = tmp_path / "over.dcm"
    write_dicom(path, render_film(), patient_id="over")
    data = bytearray(path.read_bytes())
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    data[middle : middle + 8] = b"\xff\x11\x22\x33\x44\x55\x66\x77"  # e.g. a block of another file
    path.write_bytes(bytes(data))
    for fast in (True, False):
        assert refused(path, fast=fast) == (
            "corrupt JPEG frame: marker FF11 inside the compressed data (bytes overwritten or inserted); "
            "replace the file with a good copy"
        )


def test_corrupt_jpeg_frame_bytes_lost_from_the_compressed_data(tmp_path):
    path = tmp_path / "lost.dcm"
    write_dicom(path, render_film(), patient_id="lost")
    data = path.read_bytes()
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    path.write_bytes(data[:middle] + data[middle + 3 :])
    reason = refused(path)
    assert reason.startswith("corrupt DICOM: the compressed pixel data is damaged (an item of ")
    assert reason.endswith(" bytes runs past the end of the pixel data: bytes lost?); replace the file with a good copy")


def test_corrupt_jpeg_frame_header_that_disagrees_with_the_dicom_header(tmp_path):
    path = tmp_path / "sof.dcm"

    def taller(frame):
        at = frame.index(b"\xff\xc0") + 5  # the frame header's height
        return frame[:at] + (80).to_bytes(2, "big") + frame[at + 2 :]

    jpeg_dicom_with_frame(path, taller)
    assert refused(path) == (
        "corrupt JPEG frame: 80 x 128 pixels, but the header says Rows x Columns = 128 x 128; replace the file with a good copy"
    )


def test_jpeg_too_small_for_the_size_it_claims_is_refused_not_filled_with_grey(tmp_path):
    path = tmp_path / "claims.dcm"

    def larger(frame):
        at = frame.index(b"\xff\xc0") + 5  # the frame header's height and width
        return frame[:at] + (4096).to_bytes(2, "big") * 2 + frame[at + 4 :]

    jpeg_dicom_with_frame(path, larger)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 4096  # consistent with the frame header, but the data holds 128 x 128 pixels
    ds.save_as(path)
    for fast in (True, False):
        reason = refused(path, fast=fast)
        assert reason.startswith("corrupt JPEG frame: ")
        assert reason.endswith(" bytes of compressed data cannot hold 4096 x 4096 pixels; replace the file with a good copy")


def test_corrupt_jpeg_huffman_table_is_refused(tmp_path):
    path = tmp_path / "dht.dcm"

    def bogus_table(frame):
        at = frame.index(b"\xff\xc4") + 5  # the code counts of the first Huffman table
        return frame[:at] + b"\xff" * 16 + frame[at + 16 :]

    jpeg_dicom_with_frame(path, bogus_table)
    for fast in (True, False):
        assert refused(path, fast=fast).startswith("pixel data cannot be decoded (")


def render_film(size=128):
    from pneumonia.data.phantom.patients import draw_patients
    from pneumonia.data.phantom.render import render

    return render(draw_patients(1, seed=2)[0], size).pixels


def test_rgb_dicom(tmp_path):
    path = tmp_path / "rgb.dcm"
    write_dicom(path, gradient(), patient_id="rgb", jpeg=False)
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = np.repeat(gradient()[:, :, None], 3, axis=2).tobytes()
    ds.save_as(path)
    assert refused(path) == (
        "colour DICOM (SamplesPerPixel 3, PhotometricInterpretation 'RGB'); only greyscale X-rays are supported"
    )


def test_multi_frame_dicom(tmp_path):
    path = tmp_path / "frames.dcm"
    write_dicom(path, gradient(), patient_id="frames", jpeg=False)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = gradient().tobytes() * 2
    ds.save_as(path)
    assert refused(path) == "not a single greyscale image: multi-frame DICOM (2 frames); give each frame as a file"


def test_rows_and_columns_that_do_not_match_the_pixel_data(tmp_path):
    path = tmp_path / "rows.dcm"
    write_dicom(path, gradient(), patient_id="rows", jpeg=False)
    ds = pydicom.dcmread(path)
    ds.Rows = 32  # pydicom itself would read the first 32 rows and drop the rest with a warning
    ds.save_as(path)
    assert refused(path) == (
        "corrupt DICOM: the pixel data holds 4,096 bytes, but Rows x Columns = 32 x 64 at 8 bits need 2,048 "
        "(bytes inserted or a damaged header); replace the file with a good copy"
    )


def test_absurd_image_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.dcm"
    write_dicom(path, gradient(), patient_id="huge")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 65535
    ds.save_as(path)
    assert refused(path) == (
        "image of 65535 x 65535 pixels is larger than the 67,108,864 pixels this reader accepts (a damaged header?); "
        "replace the file with a good copy or downscale it"
    )


def test_malformed_header_values(tmp_path):
    path = tmp_path / "bad.dcm"
    write_dicom(path, gradient(), patient_id="bad", jpeg=False, pixel_spacing=0.143)
    good = path.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(good))
    ds.BitsStored = 12  # more than the 8 bits allocated
    ds.save_as(path)
    assert refused(path) == (
        "corrupt DICOM header: BitsStored is 12, not between 1 and BitsAllocated (8); replace the file with a good copy"
    )


def test_bytes_inserted_into_uncompressed_pixel_data(tmp_path):
    path = tmp_path / "inserted.dcm"
    write_dicom(path, gradient(), patient_id="inserted", jpeg=False)
    data = path.read_bytes()
    path.write_bytes(data[:-2000] + b"\0\0" + data[-2000:])  # pydicom alone would read a shifted image
    assert refused(path).startswith("corrupt DICOM: 2 bytes after the last element (which ends at byte ")


def test_deflated_dicom_is_refused_before_inflating(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = tmp_path / "deflated.dcm"
    write_dicom(path, gradient(), patient_id="deflated", jpeg=False)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert refused(path) == (
        "deflated DICOM (Deflated Explicit VR Little Endian) is not accepted: inflating it has no size limit; "
        "save it uncompressed or as JPEG"
    )


def test_missing_file(tmp_path):
    assert refused(tmp_path / "gone.dcm") == (
        "cannot be read (No such file or directory); check that the file exists and is readable"
    )


def test_a_1_bit_segmentation_is_not_a_single_greyscale_image_not_corrupt():
    from pydicom.data import get_testdata_file

    with pytest.raises(DicomReadError) as refused:
        read_dicom(get_testdata_file("liver_1frame.dcm"), 32)
    assert refused.value.reason.startswith("not a single greyscale image: 1-bit pixels")
    assert "corrupt" not in refused.value.reason


@pytest.mark.parametrize("jpeg", [True, False])
def test_several_sizes_from_one_read_are_each_sizes_own_image(tmp_path, jpeg):
    from pneumonia.data.dicom.read import read_dicom_sizes

    path = tmp_path / "x.dcm"
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    write_dicom(path, pixels, patient_id="p7", jpeg=jpeg)
    images, info = read_dicom_sizes(path, (64, 256, 512))
    assert info.patient_id == "p7"
    for size, image in zip((64, 256, 512), images):
        assert np.array_equal(image, read_dicom(path, size)[0]), size


CONVERT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from project_params import project_params
from pneumonia.data import dicom_to_npy
for image_size in (128, 300):  # from 512: the JPEG fast path (at most half the side), and the plain decode and resize
    params = project_params({"dicom_to_npy": {"image_size": image_size, "workers": 1}})
    dicom_to_npy.run(Path(sys.argv[1]), Path(sys.argv[2]) / str(image_size), params.dicom_to_npy, params.split)
"""


def test_conversion_is_bit_identical_whatever_the_simd_path(tmp_path):
    """dicom_to_npy writes the same arrays and manifest under this CPU's best SIMD path and under the x86-64 baseline."""
    limited = baseline_environment()
    generate(tmp_path / "raw", patients=12, size=512, seed=6, workers=1)
    tests = Path(__file__).parent
    run_python(CONVERT, tmp_path / "raw", tmp_path / "default", tests)
    run_python(CONVERT, tmp_path / "raw", tmp_path / "baseline", tests, env=limited)
    default, baseline = files_of(tmp_path / "default"), files_of(tmp_path / "baseline")
    assert sorted(default) == sorted(baseline)
    assert {name.split("/")[1] for name in default} >= {"train.npy", "val.npy", "test.npy", "manifest.csv"}
    assert [name for name in default if default[name] != baseline[name]] == []
