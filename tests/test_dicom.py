"""Reading real pydicom-written DICOMs: JPEG Baseline (as RSNA) and uncompressed."""

import numpy as np
import pydicom
import pytest

from pneumonia.dicom import read_dicom
from pneumonia.errors import DicomReadError
from pneumonia.phantom import write_dicom


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
    from pneumonia.phantom import render, draw_patients

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
