"""`pneumonia predict` on real pydicom-written DICOMs, with a tiny checkpoint trained here and an untrained detector."""

import csv

import numpy as np
import pytest
import torch

from pneumonia import phantom, train
from pneumonia.__main__ import main
from pneumonia.checkpoint import load_classifier
from pneumonia.detection.detector import LoadedDetector, save_detector
from pneumonia.detection.network import build_detector
from pneumonia.model_file import read_model, save_model
from pneumonia.predict import (
    CSV_COLUMNS, FilePrediction, ImagePrediction, find_dicoms, write_predictions_csv, write_submission,
)
from project_params import project_params
from tiny_data import prepare

# One pytest-xdist worker runs this file: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("predict")

PARAMS = project_params(
    {
        "split": {"train_size": 0.6, "test_size": 0},
        "dicom_to_npy": {"image_size": 32, "workers": 1, "grid_images": 2},
        "train": {"max_epochs": 1, "batch_size": 8, "grid_images": 2, "accelerator": "cpu"},
    }
)
SIDE = 128  # pixels of the DICOMs predicted on


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = prepare(tmp_path_factory.mktemp("model"), PARAMS, patients=30, size=64, seed=5)
    train.run(
        root / "processed", root / "dataset.json", PARAMS.train, seed=11,
        model_path=root / "model.safetensors", live_dir=root / "dvclive", grid_path=None,
        windowing=PARAMS.dicom_to_npy.windowing,
    )
    # An untrained detector with a low box threshold: predict's plumbing, not its accuracy, is tested here.
    torch.manual_seed(0)
    network = build_detector("centernet_resnet18", 16)
    save_detector(root / "detector.safetensors", network, LoadedDetector(
        network, "centernet_resnet18", 16, image_size=64, mean=0.4, std=0.3, image_threshold=0.0,
        box_threshold=0.002, nms_iou=0.5, max_boxes=3,
    ))
    return root / "model.safetensors"


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Two JPEG and one uncompressed phantom DICOM (one in a subfolder), one broken .dcm and a stray text file."""
    folder = tmp_path_factory.mktemp("dicoms")
    (folder / "nested").mkdir()
    patients = phantom.draw_patients(20, seed=2)
    positive = next(p for p in patients if p.opacities)
    negatives = [p for p in patients if not p.opacities][:2]
    ids = {}
    for path, patient, jpeg in (
        (folder / "a.dcm", positive, True),
        (folder / "b.dcm", negatives[0], False),
        (folder / "nested" / "c.DCM", negatives[1], True),
    ):
        phantom.write_dicom(
            path, phantom.render(patient, SIDE).pixels, patient_id=patient.patient_id, pixel_spacing=0.5, jpeg=jpeg
        )
        ids[path.name] = patient.patient_id
    (folder / "broken.dcm").write_bytes(b"this is not a DICOM file")
    (folder / "notes.txt").write_text("not an image")
    return folder, ids


def detector(checkpoint):
    return checkpoint.parent / "detector.safetensors"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_with_one_unreadable_file(checkpoint, dicoms, tmp_path, capsys):
    folder, ids = dicoms
    out, submission, overlays = tmp_path / "pred.csv", tmp_path / "submission.csv", tmp_path / "overlays"
    code = main(["predict", str(folder), "--model", str(checkpoint), "--detector", str(detector(checkpoint)),
                 "--out", str(out),
                 "--rsna-submission", str(submission), "--overlays", str(overlays), "--batch-size", "2"])
    assert code == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "broken.dcm" in errors[0] and "not a DICOM" in errors[0]
    for name in ("a.dcm", "b.dcm", "c.DCM", "broken.dcm"):
        assert name in captured.out
    assert "notes.txt" not in captured.out

    threshold = load_classifier(checkpoint).threshold
    rows = read_csv(out)
    assert list(rows[0]) == CSV_COLUMNS
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert sorted(by_name) == ["a.dcm", "b.dcm", "broken.dcm", "c.DCM"]
    assert by_name["broken.dcm"]["error"] and by_name["broken.dcm"]["probability"] == ""
    for name in ("a.dcm", "b.dcm", "c.DCM"):
        row = by_name[name]
        assert row["error"] == "" and row["patientId"] == ids[name]
        probability = float(row["probability"])
        assert 0 <= probability <= 1 and row["label"] == str(int(probability >= threshold))
        boxes = [list(map(float, b.split())) for b in row["boxes"].split(";") if b]
        assert all(len(b) == 4 and min(b) >= 0 and b[0] + b[2] <= SIDE and b[1] + b[3] <= SIDE for b in boxes)
        confidences = [float(c) for c in row["confidences"].split(";") if c]
        assert len(confidences) == len(boxes) <= 3 and all(c >= 0.002 for c in confidences)
        assert 0 <= float(row["detector_probability"]) <= 1
        assert 0 <= float(row["area_percent"]) <= 100 and float(row["area_mm2"]) >= 0

    lines = submission.read_text().splitlines()
    assert lines[0] == "patientId,PredictionString"
    entries = dict(line.split(",") for line in lines[1:])
    assert sorted(entries) == sorted(ids.values())  # the broken file is left out
    for text in entries.values():
        numbers = [float(v) for v in text.split()]
        assert len(numbers) % 5 == 0 and all(0 <= c <= 1 for c in numbers[::5])
    assert sorted(p.name for p in overlays.glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_files_that_all_read_exit_zero(checkpoint, dicoms, tmp_path, capsys):
    folder, _ = dicoms
    out = tmp_path / "pred.csv"
    files = [str(folder / "a.dcm"), str(folder / "nested" / "c.DCM")]
    assert main(["predict", *files, "--model", str(checkpoint), "--detector", str(detector(checkpoint)),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert [row["error"] for row in read_csv(out)] == ["", ""]


def test_patient_id_falls_back_to_the_file_name(checkpoint, tmp_path):
    path = tmp_path / "anonymous.dcm"
    phantom.write_dicom(path, np.full((64, 64), 90, np.uint8), patient_id="", jpeg=False)
    assert main(["predict", str(path), "--model", str(checkpoint), "--detector", str(detector(checkpoint)),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert read_csv(tmp_path / "p.csv")[0]["patientId"] == "anonymous"


def test_missing_checkpoint_is_one_line(dicoms, tmp_path, capsys):
    folder, _ = dicoms
    assert main(["predict", str(folder), "--model", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pneumonia predict: error: ") and "model file not found" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_no_dicom_found_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(tmp_path / "none.ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pneumonia predict: error: no DICOM") and len(err.strip().splitlines()) == 1
    assert main(["predict", str(tmp_path / "missing.dcm")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_folders_are_searched_recursively_and_sorted(dicoms):
    folder, _ = dicoms
    assert [p.relative_to(folder).as_posix() for p in find_dicoms([folder])] == [
        "a.dcm", "b.dcm", "broken.dcm", "nested/c.DCM",
    ]


def test_missing_detector_is_one_line(checkpoint, dicoms, tmp_path, capsys):
    folder, _ = dicoms
    assert main(["predict", str(folder), "--model", str(checkpoint), "--detector", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert "none.safetensors: model file not found; retrain it with `dvc repro detect`" in err
    assert len(err.strip().splitlines()) == 1


def test_csv_and_submission_formats(tmp_path):
    found = ImagePrediction(0.95, True, 0.9, ((50, 60, 70, 80), (10, 20, 30, 40)), (0.5, 0.9), 0.03, 300.0)
    none = ImagePrediction(0.1, False, 0.05, (), (), 0.0, None)
    predictions = [
        FilePrediction(tmp_path / "x.dcm", "P1", found),
        FilePrediction(tmp_path / "y.dcm", "P2", none),
        FilePrediction(tmp_path / "z.dcm", "z", error="corrupt"),
    ]
    write_predictions_csv(tmp_path / "p.csv", predictions)
    rows = read_csv(tmp_path / "p.csv")
    assert rows[0]["boxes"] == "50.0 60.0 70.0 80.0;10.0 20.0 30.0 40.0" and rows[0]["confidences"] == "0.5000;0.9000"
    assert (rows[0]["area_percent"], rows[0]["area_mm2"], rows[0]["detector_probability"]) == ("3.00", "300", "0.9000")
    assert (rows[1]["boxes"], rows[1]["label"], rows[1]["area_mm2"]) == ("", "0", "")
    assert rows[2]["error"] == "corrupt"
    write_submission(tmp_path / "s.csv", predictions)
    assert (tmp_path / "s.csv").read_text().splitlines() == [
        "patientId,PredictionString",
        "P1,0.9000 10.0 20.0 30.0 40.0 0.5000 50.0 60.0 70.0 80.0",
        "P2,",
    ]


def test_files_that_are_not_chest_radiographs_are_not_scored_unless_allowed(checkpoint, dicoms, tmp_path, capsys):
    from dicom_writer import film, write_test_dicom

    folder, _ = dicoms
    abdomen = write_test_dicom(tmp_path / "abdomen.dcm", film(SIDE, 8), patient_id="abd", body_part="ABDOMEN")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(folder / "a.dcm"), str(abdomen), "--model", str(checkpoint), "--detector", str(detector(checkpoint)), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "1 predicted, 0 failed, 1 not scored" in captured.out
    assert captured.err.strip() == (
        f"pneumonia predict: {abdomen}: not a chest radiograph: BodyPartExamined=ABDOMEN; not scored "
        "(--allow-non-chest scores it anyway)"
    )
    rows = read_csv(out)
    assert (rows[1]["patientId"], rows[1]["error"], rows[1]["probability"]) == (
        "abd", "not a chest radiograph: BodyPartExamined=ABDOMEN", "",
    )
    assert rows[0]["error"] == "" and rows[0]["probability"]
    args = ["predict", str(abdomen), "--model", str(checkpoint), "--detector", str(detector(checkpoint)), "--out", str(out), "--allow-non-chest"]
    assert main(args) == 0
    assert read_csv(out)[0]["error"] == "" and read_csv(out)[0]["probability"]


def test_the_model_file_records_windowing_and_predict_renders_with_it(checkpoint, dicoms, tmp_path, monkeypatch):
    from pneumonia import predict
    from pneumonia.model_file import read_model, save_model

    assert load_classifier(checkpoint).windowing == "auto"  # PARAMS' dicom_to_npy.windowing, passed by train
    seen = []
    original = predict.read_dicom

    def spy(path, size, **kwargs):
        seen.append(kwargs.get("windowing"))
        return original(path, size, **kwargs)

    monkeypatch.setattr(predict, "read_dicom", spy)
    folder, _ = dicoms
    main(["predict", str(folder / "a.dcm"), "--model", str(checkpoint), "--detector", str(detector(checkpoint)), "--out", str(tmp_path / "p.csv"),
          "--overlays", str(tmp_path / "o")])
    assert seen == ["auto", "auto"]  # the image and its overlay
    # A model file from before windowing was recorded renders as it was trained: the stored range.
    header, tensors = read_model(checkpoint, "classifier", "retrain")
    del header["windowing"]
    save_model(tmp_path / "old.safetensors", "classifier", tensors, header)
    assert load_classifier(tmp_path / "old.safetensors").windowing == "none"
