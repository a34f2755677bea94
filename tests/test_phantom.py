"""The phantom RSNA dataset: layout, determinism, DICOM headers, labels and image content."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from simd import baseline_environment, files_of, run_python
from sklearn.metrics import roc_auc_score

from pneumonia.data.phantom import dataset, film
from pneumonia.data.phantom.anatomy import support
from pneumonia.data.phantom.dataset import generate, preview
from pneumonia.data.phantom.dicom_writer import CR_IMAGE_STORAGE, write_dicom
from pneumonia.data.phantom.exact_math import blur
from pneumonia.data.phantom.patients import LUNG_OPACITY, NORMAL, NOT_NORMAL, NOT_NORMAL_FINDINGS, Patient, draw_patients
from pneumonia.data.phantom.render import Rendering, render

SIZE = 256  # pixels; small, for speed
PATIENTS = 40
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("phantom") / "raw"
    generate(raw, patients=PATIENTS, size=SIZE, seed=5, workers=2)
    return raw


@pytest.fixture(scope="module")
def positives() -> list[tuple[Patient, Rendering]]:
    """Rendered opacity patients, drawn from enough patients to have a few dozen."""
    patients = [p for p in draw_patients(160, seed=9) if p.class_name == LUNG_OPACITY]
    return [(p, render(p, SIZE)) for p in patients]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- dataset


def test_generate_is_deterministic_whatever_the_workers(raw_dir, tmp_path):
    generate(tmp_path / "one_worker", patients=PATIENTS, size=SIZE, seed=5, workers=1)
    generate(tmp_path / "other_seed", patients=PATIENTS, size=SIZE, seed=6, workers=2)

    same = files_of(tmp_path / "one_worker")
    assert same == files_of(raw_dir)
    other = files_of(tmp_path / "other_seed")
    assert other["stage_2_train_labels.csv"] != same["stage_2_train_labels.csv"]
    assert not set(other) & {name for name in same if name.endswith(".dcm")}


GENERATE = """
import sys
from pathlib import Path
from pneumonia.data.phantom.dataset import generate
for size in (512, 300):  # anatomy enlarged 2x (as at 1024: a whole multiple), and by 300/256
    generate(Path(sys.argv[1]) / str(size), patients=12, size=size, seed=6, workers=1)
"""


def test_generate_is_bit_identical_whatever_the_simd_path(tmp_path):
    """The same bytes under numpy's (and libjpeg-turbo's) best SIMD path on this CPU and under the x86-64 baseline.

    12 patients include opacities, devices and the other findings: every code path of the image.
    """
    limited = baseline_environment()
    run_python(GENERATE, tmp_path / "default")
    run_python(GENERATE, tmp_path / "baseline", env=limited)
    default, baseline = files_of(tmp_path / "default"), files_of(tmp_path / "baseline")
    assert len(default) == 2 * (12 + 2)
    differ = sorted(name for name in default if default[name] != baseline.get(name))
    assert not differ, f"{len(differ)} of {len(default)} files depend on the SIMD path: {differ[:4]}"
    findings = {f for p in draw_patients(12, seed=6) for f in p.findings}
    assert findings == set(NOT_NORMAL_FINDINGS)
    assert any(p.class_name == LUNG_OPACITY for p in draw_patients(12, seed=6))


def test_layout_and_label_files(raw_dir):
    assert sorted(p.name for p in raw_dir.iterdir()) == [
        "stage_2_detailed_class_info.csv",
        "stage_2_train_images",
        "stage_2_train_labels.csv",
    ]
    labels_text = (raw_dir / "stage_2_train_labels.csv").read_bytes()
    classes_text = (raw_dir / "stage_2_detailed_class_info.csv").read_bytes()
    assert labels_text.startswith(b"patientId,x,y,width,height,Target\n")
    assert classes_text.startswith(b"patientId,class\n")
    assert b"\r" not in labels_text + classes_text

    labels = read_rows(raw_dir / "stage_2_train_labels.csv")
    classes = read_rows(raw_dir / "stage_2_detailed_class_info.csv")
    patients = draw_patients(PATIENTS, seed=5)
    assert len(labels) == len(classes) == sum(max(1, p.opacities) for p in patients)
    # Rows in patient order, one per box, and the class file row for row alongside.
    assert [row["patientId"] for row in labels] == [p.patient_id for p in patients for _ in range(max(1, p.opacities))]
    assert [row["patientId"] for row in classes] == [row["patientId"] for row in labels]
    by_id = {p.patient_id: p for p in patients}
    for label, klass in zip(labels, classes):
        patient = by_id[label["patientId"]]
        assert klass["class"] == patient.class_name
        if patient.class_name == LUNG_OPACITY:
            assert label["Target"] == "1"
            for key in ("x", "y", "width", "height"):
                assert re.fullmatch(r"\d+\.\d", label[key]), label  # RSNA writes floats like 264.0
        else:
            assert label["Target"] == "0"
            assert label["x"] == label["y"] == label["width"] == label["height"] == ""

    images = sorted(p.name for p in (raw_dir / "stage_2_train_images").iterdir())
    assert images == sorted(f"{p.patient_id}.dcm" for p in patients)


def test_dicom_headers_like_rsna(raw_dir):
    patients = {p.patient_id: p for p in draw_patients(PATIENTS, seed=5)}
    uids = set()
    for path in sorted((raw_dir / "stage_2_train_images").iterdir()):
        ds = pydicom.dcmread(path)
        patient = patients[path.stem]
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert (ds.Modality, ds.BodyPartExamined) == ("CR", "CHEST")
        assert ds.ViewPosition == patient.view in ("AP", "PA")
        assert ds.PatientID == patient.patient_id
        assert ds.PatientSex == patient.sex in ("M", "F")
        assert ds.PatientAge == str(patient.age)  # RSNA's plain number of years
        spacing = [float(s) for s in ds.PixelSpacing]
        assert spacing[0] == spacing[1] == patient.pixel_spacing
        assert 0.14 <= spacing[0] <= 0.19
        pixels = ds.pixel_array
        assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
        uids.add((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    assert len({u for triple in uids for u in triple}) == 3 * PATIENTS


def test_generate_replaces_raw_dir_whole(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stale.txt").write_text("from an older run")
    generate(raw, patients=4, size=64, seed=1, workers=1)
    assert not (raw / "stale.txt").exists()
    assert len(list((raw / "stage_2_train_images").iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary folder left behind


def test_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
    calls = []

    def failing_render(patient, size):
        calls.append(patient)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_render(patient, size)

    real_render = render
    monkeypatch.setattr(dataset, "render", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "raw", patients=6, size=64, seed=1, workers=1)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- patients


def test_patient_statistics_match_rsna():
    patients = draw_patients(2000, seed=3)
    n = len(patients)
    classes = Counter(p.class_name for p in patients)
    assert classes[LUNG_OPACITY] / n == pytest.approx(0.225, abs=0.03)
    assert classes[NOT_NORMAL] / n == pytest.approx(0.443, abs=0.03)
    assert classes[NORMAL] / n == pytest.approx(0.332, abs=0.03)

    counts = Counter(p.opacities for p in patients if p.class_name == LUNG_OPACITY)
    positives = classes[LUNG_OPACITY]
    assert set(counts) <= {1, 2, 3, 4}
    assert counts[1] / positives == pytest.approx(0.433, abs=0.06)
    assert counts[2] / positives == pytest.approx(0.544, abs=0.06)
    assert (counts[3] + counts[4]) / positives < 0.06
    assert all(p.opacities == 0 for p in patients if p.class_name != LUNG_OPACITY)
    assert all(p.findings for p in patients if p.class_name == NOT_NORMAL)
    assert not any(p.findings for p in patients if p.class_name == NORMAL)

    assert sum(p.view == "PA" for p in patients) / n == pytest.approx(0.54, abs=0.03)
    assert sum(p.sex == "M" for p in patients) / n == pytest.approx(0.57, abs=0.03)
    ages = np.array([p.age for p in patients])
    assert 18 <= ages.min() and ages.max() <= 90 and 40 <= ages.mean() <= 56
    assert all(0.14 <= p.pixel_spacing <= 0.19 for p in patients)
    assert all(UUID.match(p.patient_id) for p in patients)
    assert len({p.patient_id for p in patients}) == n


def test_draw_patients_is_a_stable_prefix():
    assert draw_patients(30, seed=3) == draw_patients(100, seed=3)[:30]
    assert draw_patients(30, seed=3) != draw_patients(30, seed=4)


# --------------------------------------------------------------------------- images


def test_boxes_lie_inside_the_image_and_the_body(positives):
    assert len(positives) >= 20
    for patient, rendering in positives:
        assert len(rendering.boxes) == patient.opacities
        air = np.median(np.concatenate([rendering.pixels[:8, :8], rendering.pixels[:8, -8:]]))
        for box in rendering.boxes:
            assert 0 <= box.x < box.x + box.width <= SIZE
            assert 0 <= box.y < box.y + box.height <= SIZE
            assert 0.05 * SIZE <= box.width <= 0.5 * SIZE and 0.05 * SIZE <= box.height <= 0.6 * SIZE
            inside = rendering.pixels[int(box.y) : int(box.y + box.height), int(box.x) : int(box.x + box.width)]
            assert np.percentile(inside, 2) > air + 15, "a box reaches outside the body"


def test_boxes_are_where_the_opacities_are(positives):
    """The same patient drawn without opacities differs from the real image inside the boxes, hardly outside.

    Drawn at a fixed contrast, so the test does not depend on the tuned default.
    """
    for patient, _ in positives:
        rendering = render(patient, SIZE, opacity_contrast=0.5)
        clear = render(patient, SIZE, opacity_contrast=0.0)
        assert rendering.boxes == clear.boxes == render(patient, SIZE).boxes
        added = rendering.pixels.astype(float) - clear.pixels
        in_boxes = np.zeros(added.shape, bool)
        for box in rendering.boxes:
            window = np.s_[int(box.y) : int(box.y + box.height), int(box.x) : int(box.x + box.width)]
            in_boxes[window] = True
            assert added[window].mean() > 3, "the box holds no opacity"  # grey levels
        assert added[in_boxes].sum() > 0.75 * added.sum()
        assert abs(added[~in_boxes].mean()) < 1.5


def test_mean_brightness_does_not_separate_the_classes():
    patients = draw_patients(300, seed=11)
    brightness = [render(p, 128).pixels.mean() for p in patients]
    positive = [p.class_name == LUNG_OPACITY for p in patients]
    assert 0.3 < roc_auc_score(positive, brightness) < 0.7


@pytest.mark.parametrize("sigma", [0.6, 1.2, 6.4])
@pytest.mark.parametrize("rows, columns", [(slice(0, 64),) * 2, (slice(10, 30), slice(40, 64)), (slice(3, 5), slice(0, 1))])
def test_blur_on_a_window_is_the_whole_blur_there_bit_for_bit(sigma, rows, columns):
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    part, whole = blur(image, sigma, (rows, columns)), blur(image, sigma)[rows, columns]
    assert np.array_equal(part.view(np.uint32), whole.view(np.uint32))


def test_support_holds_every_nonzero_pixel():
    mask = np.zeros((8, 9))
    assert support(mask) == (slice(0, 0), slice(0, 0))
    mask[2, 7] = mask[5, 3] = 0.5
    assert support(mask) == (slice(2, 6), slice(3, 8))


@pytest.mark.parametrize("n, size", [(16, 64), (16, 96), (16, 40), (16, 16)])
def test_enlarge_interpolates_a_plane_exactly_and_clamps_the_edges(n, size):
    """A linear ramp enlarged (x4; x6, weights unevenly spaced; another ratio; none) is the ramp at each centre, +-1."""
    rows, columns = np.mgrid[0:n, 0:n]
    levels = (300 * rows + 70 * columns).astype(np.int32)
    enlarged = np.concatenate([values.copy() for _, values in film._enlarge(levels, size, band=8)])
    centres = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)  # in source pixels, clamped
    assert enlarged.shape == (size, size)
    assert np.abs(enlarged - (300 * centres[:, None] + 70 * centres[None, :])).max() <= 1


def test_render_is_deterministic():
    patient = draw_patients(3, seed=2)[2]
    first, second = render(patient, 96), render(patient, 96)
    assert np.array_equal(first.pixels, second.pixels) and first.boxes == second.boxes
    assert first.pixels.shape == (96, 96) and first.pixels.dtype == np.uint8


# --------------------------------------------------------------------------- write_dicom


@pytest.fixture
def gradient() -> np.ndarray:
    """A smooth 8-bit test image, 64 x 80 pixels (not square, to catch swapped rows and columns)."""
    y, x = np.mgrid[0:64, 0:80]
    return (x * 2 + y).astype(np.uint8)


def test_write_dicom_uncompressed_is_exact(tmp_path, gradient):
    path = tmp_path / "a.dcm"
    write_dicom(path, gradient, patient_id="p1", sex="F", age=7, view="AP", pixel_spacing=0.168, jpeg=False)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, gradient)
    assert (ds.PatientSex, ds.PatientAge, ds.ViewPosition) == ("F", "7", "AP")
    assert [float(s) for s in ds.PixelSpacing] == [0.168, 0.168]


def test_write_dicom_jpeg_is_close(tmp_path, gradient):
    path = tmp_path / "a.dcm"
    write_dicom(path, gradient, patient_id="p1")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.pixel_array.shape == gradient.shape and ds.pixel_array.dtype == np.uint8
    assert np.abs(ds.pixel_array.astype(int) - gradient).mean() < 2  # grey levels
    again = tmp_path / "b.dcm"
    write_dicom(again, gradient, patient_id="p1")
    assert again.read_bytes() == path.read_bytes()


def test_write_dicom_monochrome1(tmp_path, gradient):
    path = tmp_path / "a.dcm"
    write_dicom(path, gradient, patient_id="p1", photometric="MONOCHROME1")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.abs(ds.pixel_array.astype(int) - gradient).mean() < 2  # stored as given, not inverted


def test_write_dicom_12_bit(tmp_path):
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095
    path = tmp_path / "a.dcm"
    write_dicom(path, pixels, patient_id="p1", jpeg=False, bits_stored=12)
    ds = pydicom.dcmread(path)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.pixel_array.dtype == np.uint16
    assert np.array_equal(ds.pixel_array, pixels)


def written_by_pydicom(path: Path, pixels: np.ndarray, *, patient_id: str, sex: str = "M", age: int = 50,
                       view: str = "PA", pixel_spacing: float = 0.143, jpeg: bool = True,
                       photometric: str = "MONOCHROME2", bits_stored: int = 8) -> None:
    """What write_dicom wrote when it went through pydicom's Dataset: the reference for its bytes."""
    from io import BytesIO

    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[patient_id, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "19010101", "000000.00", ""
    ds.Modality, ds.ConversionType, ds.ReferringPhysicianName = "CR", "WSD", ""
    ds.SeriesDescription = f"view: {view}"
    ds.PatientName = ds.PatientID = patient_id
    ds.PatientBirthDate, ds.PatientSex = "", sex
    with pydicom.config.disable_value_validation():
        ds.PatientAge = str(age)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID = uid("study"), uid("series"), ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation, ds.SamplesPerPixel, ds.PhotometricInterpretation = "", 1, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if jpeg:
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2" if bits_stored > 8 else np.uint8).tobytes()
        ds["PixelData"].VR = "OW" if bits_stored > 8 else "OB"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "shape, options",
    [
        ((64, 80), {"patient_id": "p1"}),
        ((63, 81), {"patient_id": "odd", "sex": "F", "age": 7, "view": "AP", "pixel_spacing": 0.1, "jpeg": False}),
        ((64, 80), {"patient_id": "m" * 41, "age": 100, "pixel_spacing": 0.19, "photometric": "MONOCHROME1"}),
        ((64, 80), {"patient_id": "m1", "jpeg": False, "photometric": "MONOCHROME1"}),
        ((33, 64), {"patient_id": "b12", "jpeg": False, "bits_stored": 12}),
        ((33, 64), {"patient_id": "b16", "jpeg": False, "bits_stored": 16}),
    ],
)
def test_write_dicom_writes_what_pydicom_writes(tmp_path, shape, options):
    """write_dicom encodes its elements itself, for speed: byte for byte what pydicom's writer makes of them."""
    bits = options.get("bits_stored", 8)
    pixels = (np.arange(shape[0] * shape[1]) * 37 % 2**bits).reshape(shape).astype(np.uint8 if bits <= 8 else np.uint16)
    write_dicom(tmp_path / "ours.dcm", pixels, **options)
    written_by_pydicom(tmp_path / "pydicom.dcm", pixels, **options)
    assert (tmp_path / "ours.dcm").read_bytes() == (tmp_path / "pydicom.dcm").read_bytes()


@pytest.mark.parametrize(
    "pixels, options, message",
    [
        (np.zeros((8, 8), np.uint16), {"bits_stored": 12}, "JPEG Baseline holds 8-bit"),
        (np.zeros((8, 8), np.uint16), {"jpeg": False}, "needs uint8"),
        (np.full((8, 8), 5000, np.uint16), {"jpeg": False, "bits_stored": 12}, "beyond bits_stored=12"),
        (np.zeros((2, 8, 8), np.uint8), {}, "2-D"),
        (np.zeros((8, 8), np.uint8), {"photometric": "RGB"}, "MONOCHROME1 or MONOCHROME2"),
    ],
)
def test_write_dicom_refuses_what_it_cannot_write(tmp_path, pixels, options, message):
    with pytest.raises(ValueError, match=message):
        write_dicom(tmp_path / "a.dcm", pixels, patient_id="p1", **options)


def test_preview_sheet(tmp_path):
    from PIL import Image

    preview(tmp_path / "sheet.png", count=3, size=64, seed=1)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (3 * 64, 64)
