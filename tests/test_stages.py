"""Bad input through the real stage scripts: one line on stderr, exit code 1, no partial output."""

import sys

import numpy as np
import pytest
import yaml

from pipeline_repo import ROOT, run
from project_params import merged
from pneumonia.data.phantom.dicom_writer import write_dicom


def stage(name, workdir, params, env_extra=None, monkeypatch=None):
    (workdir / "params.yaml").write_text(yaml.safe_dump(merged(params)))
    return run([sys.executable, str(ROOT / "stages" / f"{name}.py")], workdir, check=False)


def assert_one_line_error(result, *needles):
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr
    assert errors[0].index("error:") < 20, "the error must start its own line (not follow a progress bar)"
    for needle in needles:
        assert needle in errors[0]
    assert "Traceback" not in result.stderr


def assert_nothing_written(data_dir, out):
    assert not (data_dir / out).exists()
    assert not list(data_dir.glob(f".{out}*")), "temporary leftovers"


def write_rsna_folder(folder, patients, missing=()):
    (folder / "stage_2_train_images").mkdir(parents=True)
    labels = ["patientId,x,y,width,height,Target"]
    classes = ["patientId,class"]
    for pid, target in patients:
        labels.append(f"{pid},10,10,20,20,1" if target else f"{pid},,,,,0")
        classes.append(f"{pid},{'Lung Opacity' if target else 'Normal'}")
        if pid not in missing:
            write_dicom(folder / "stage_2_train_images" / f"{pid}.dcm", np.full((64, 64), 90, np.uint8),
                        patient_id=pid, jpeg=False)
    (folder / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (folder / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"download": {"source": "ftp"}}, "download.source"),
        ({"download": {"sourse": "synthetic"}}, "download.sourse"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"max_epochs": 0}}, "train.max_epochs"),
        ({"split": {"test_size": None}}, "split.test_size"),
    ],
)
def test_bad_params_stop_before_any_work(tmp_path, params, needle):
    result = stage("download", tmp_path, params)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "data").exists()


def test_missing_kaggle_credentials(tmp_path, monkeypatch):
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    result = stage("download", tmp_path, {"download": {"source": "kaggle"}})
    assert_one_line_error(result, "KAGGLE_USERNAME", "KAGGLE_KEY", "kaggle.json", "rules")
    assert not (tmp_path / "data" / "raw").exists()


def test_labelled_patient_without_dicom(tmp_path):
    write_rsna_folder(tmp_path / "rsna", [("p1", 1), ("p2", 0), ("p3", 0)], missing=("p2",))
    result = stage("download", tmp_path, {"download": {"source": "local", "path": str(tmp_path / "rsna")}})
    assert_one_line_error(result, "p2")
    assert_nothing_written(tmp_path / "data", "raw")


def test_a_dcm_that_is_not_dicom_stops_the_conversion(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_rsna_folder(raw, [("p1", 1), ("p2", 0), ("p3", 0), ("p4", 1)])
    (raw / "stage_2_train_images" / "p3.dcm").write_text("not a DICOM at all")
    result = stage("dicom_to_npy", tmp_path, {"split": {"train_size": 2, "test_size": 0}, "dicom_to_npy": {"workers": 2}})
    assert_one_line_error(result, "p3.dcm", "not a DICOM file")
    assert_nothing_written(tmp_path / "data", "processed")


def test_on_error_skip_lists_every_bad_file_and_keeps_the_rest(tmp_path):
    raw = tmp_path / "data" / "raw"
    patients = [(f"p{i}", i % 2) for i in range(8)]
    write_rsna_folder(raw, patients)
    images = raw / "stage_2_train_images"
    for i, (pid, _) in enumerate(patients):  # a different grey per patient, to check rows
        write_dicom(images / f"{pid}.dcm", np.full((64, 64), 20 * i + 10, np.uint8), patient_id=pid, jpeg=False)
    (images / "p2.dcm").write_text("not a DICOM at all")
    whole = (images / "p5.dcm").read_bytes()
    (images / "p5.dcm").write_bytes(whole[: len(whole) // 2])  # a truncated copy
    params = {"split": {"train_size": 4, "test_size": 2}, "dicom_to_npy": {"workers": 2, "on_error": "skip", "image_size": 16}}

    result = stage("dicom_to_npy", tmp_path, params)

    assert result.returncode == 0, result.stderr
    assert "2 failed and were skipped" in result.stdout
    processed = tmp_path / "data" / "processed"
    failed = (processed / "failed.csv").read_text().splitlines()
    assert failed[0] == "patient_id,path,reason" and len(failed) == 3
    assert failed[1].startswith("p2,") and "not a DICOM file" in failed[1]
    assert failed[2].startswith("p5,")
    from pneumonia.data.manifest import read_manifest

    manifest = read_manifest(processed)
    assert [r.patient_id for r in manifest] == ["p0", "p1", "p3", "p4", "p6", "p7"]
    for r in manifest:  # every kept image sits at the row the manifest names
        array = np.load(processed / f"{r.split}.npy", mmap_mode="r")
        assert len(array) == sum(m.split == r.split for m in manifest)
        assert array[r.row].mean() == pytest.approx(20 * int(r.patient_id[1:]) + 10, abs=1)


def test_on_error_skip_with_nothing_readable_stops(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_rsna_folder(raw, [("p1", 1), ("p2", 0)])
    for pid in ("p1", "p2"):
        (raw / "stage_2_train_images" / f"{pid}.dcm").write_text("text")
    result = stage("dicom_to_npy", tmp_path, {"split": {"train_size": 1, "test_size": 0}, "dicom_to_npy": {"on_error": "skip", "workers": 1}})
    assert_one_line_error(result, "none of the 2 images could be read", "p1.dcm")
    assert_nothing_written(tmp_path / "data", "processed")


def test_a_split_with_a_single_class_is_named(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_rsna_folder(raw, [("p0", 1), ("p1", 0), ("p2", 1), ("p3", 0), ("p4", 0), ("p5", 0)])
    params = {"split": {"train_size": 4, "test_size": 0}, "dicom_to_npy": {"workers": 1, "image_size": 16}}
    for name in ("dicom_to_npy", "compute_stats"):
        assert stage(name, tmp_path, params).returncode == 0
    result = stage("train", tmp_path, params)
    assert_one_line_error(result, "the val split has a single class")
    assert not (tmp_path / "models" / "classifier.safetensors").exists()


def test_non_chest_files_are_counted_and_listed_under_skip(tmp_path):
    from dicom_writer import film, write_test_dicom
    from pneumonia.data.manifest import read_manifest

    raw = tmp_path / "data" / "raw"
    write_rsna_folder(raw, [(f"p{i}", i % 2) for i in range(6)])
    images = raw / "stage_2_train_images"
    write_test_dicom(images / "p1.dcm", film(64, 8), patient_id="p1", body_part="ABDOMEN")
    write_test_dicom(images / "p4.dcm", film(64, 8), patient_id="p4", modality="CT")
    write_test_dicom(images / "p3.dcm", film(64, 8), patient_id="p3", pixel_spacing="0", imager_spacing=0.2)
    params = {"split": {"train_size": 2, "test_size": 1}, "dicom_to_npy": {"workers": 1, "on_error": "skip", "image_size": 16}}

    result = stage("dicom_to_npy", tmp_path, params)

    assert result.returncode == 0, result.stderr
    assert "2 failed and were skipped (listed in failed.csv), 2 of them not chest radiographs" in result.stdout
    processed = tmp_path / "data" / "processed"
    assert (processed / "failed.csv").read_text().splitlines()[1:] == [
        "p1,data/raw/stage_2_train_images/p1.dcm,not a chest radiograph: BodyPartExamined=ABDOMEN",
        "p4,data/raw/stage_2_train_images/p4.dcm,not a chest radiograph: Modality=CT",
    ]
    rows = {r.patient_id: r for r in read_manifest(processed)}
    assert sorted(rows) == ["p0", "p2", "p3", "p5"]
    assert rows["p3"].pixel_spacing_mm == pytest.approx(0.2)
    assert rows["p3"].pixel_spacing_note.startswith("PixelSpacing '0' is not a positive number of mm; ImagerPixelSpacing")
    assert rows["p0"].pixel_spacing_note == ""


def test_a_non_chest_file_stops_the_conversion_under_on_error_fail(tmp_path):
    from dicom_writer import film, write_test_dicom

    raw = tmp_path / "data" / "raw"
    write_rsna_folder(raw, [("p1", 1), ("p2", 0), ("p3", 0), ("p4", 1)])
    write_test_dicom(raw / "stage_2_train_images" / "p2.dcm", film(64, 8), patient_id="p2", body_part="LEG")
    result = stage("dicom_to_npy", tmp_path, {"split": {"train_size": 2}, "dicom_to_npy": {"workers": 1}})
    assert_one_line_error(result, "p2.dcm: not a chest radiograph: BodyPartExamined=LEG", "dicom_to_npy.on_error: skip")
    assert_nothing_written(tmp_path / "data", "processed")
