"""Bad input through the real stage scripts: one line on stderr, exit code 1, no partial output."""

import sys

import numpy as np
import pytest
import yaml

from pipeline_repo import ROOT, run
from pneumonia.phantom import write_dicom


def stage(name, workdir, params, env_extra=None, monkeypatch=None):
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
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
    result = stage("dicom_to_npy", tmp_path, {"split": {"train_size": 2}, "dicom_to_npy": {"workers": 2}})
    assert_one_line_error(result, "p3.dcm", "not a DICOM file")
    assert_nothing_written(tmp_path / "data", "processed")
