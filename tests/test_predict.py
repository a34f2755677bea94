"""`pneumonia predict` on real pydicom-written DICOMs, with a tiny classifier trained here inside a predictor file."""

import csv

import numpy as np
import pytest

from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.phantom.patients import draw_patients
from pneumonia.data.phantom.render import render
from pneumonia.classification import train
from pneumonia.__main__ import main
from pneumonia.prediction.predict import CSV_COLUMNS, FilePrediction, find_images, write_predictions_csv, write_submission
from pneumonia.prediction.predictor import ImageAnswer, load_predictor
from project_params import project_params
from tiny_data import prepare
from tiny_predictor import write_predictor

PARAMS = project_params(
    {
        "split": {"train_size": 0.6, "test_size": 0},
        "dicom_to_npy": {"image_size": 32, "workers": 1, "grid_images": 2},
        "train": {"max_epochs": 1, "batch_size": 8, "grid_images": 2, "accelerator": "cpu"},
    }
)
SIDE = 128  # pixels of the DICOMs predicted on


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = prepare(tmp_path_factory.mktemp("model"), PARAMS, patients=30, size=64, seed=5)
    train.run(
        root / "processed", root / "dataset.json", PARAMS.train, seed=11,
        model_path=root / "model.safetensors", live_dir=root / "dvclive", grid_path=None,
        windowing=PARAMS.dicom_to_npy.windowing,
    )
    return root / "model.safetensors"


@pytest.fixture(scope="module")
def checkpoint(classifier):
    """The predictor: predict's plumbing, not its accuracy, is tested here (an untrained detector, every box kept)."""
    return write_predictor(classifier.with_name("pneumonia.safetensors"), classifier)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Two JPEG and one uncompressed phantom DICOM (one in a subfolder), one broken .dcm and a stray text file."""
    folder = tmp_path_factory.mktemp("dicoms")
    (folder / "nested").mkdir()
    patients = draw_patients(20, seed=2)
    positive = next(p for p in patients if p.opacities)
    negatives = [p for p in patients if not p.opacities][:2]
    ids = {}
    for path, patient, jpeg in (
        (folder / "a.dcm", positive, True),
        (folder / "b.dcm", negatives[0], False),
        (folder / "nested" / "c.DCM", negatives[1], True),
    ):
        write_dicom(
            path, render(patient, SIDE).pixels, patient_id=patient.patient_id, pixel_spacing=0.5, jpeg=jpeg
        )
        ids[path.name] = patient.patient_id
    (folder / "broken.dcm").write_bytes(b"this is not a DICOM file")
    (folder / "notes.txt").write_text("not an image")
    return folder, ids


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_with_one_unreadable_file(checkpoint, dicoms, tmp_path, capsys):
    folder, ids = dicoms
    out, submission, overlays = tmp_path / "pred.csv", tmp_path / "submission.csv", tmp_path / "overlays"
    code = main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out),
                 "--rsna-submission", str(submission), "--overlays", str(overlays), "--batch-size", "2"])
    assert code == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "broken.dcm" in errors[0] and "not a DICOM" in errors[0]
    for name in ("a.dcm", "b.dcm", "c.DCM", "broken.dcm"):
        assert name in captured.out
    assert "notes.txt" not in captured.out

    threshold = load_predictor(checkpoint).decision.threshold
    rows = read_csv(out)
    assert list(rows[0]) == CSV_COLUMNS
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert sorted(by_name) == ["a.dcm", "b.dcm", "broken.dcm", "c.DCM"]
    broken = by_name["broken.dcm"]
    assert (broken["status"], broken["probability"], broken["ood_distance"]) == ("unreadable", "", "")
    assert "not a DICOM" in broken["reason"]
    for name in ("a.dcm", "b.dcm", "c.DCM"):
        row = by_name[name]
        assert (row["status"], row["reason"], row["patientId"], row["out_of_distribution"]) == ("scored", "", ids[name], "0")
        probability = float(row["probability"])
        assert 0 <= probability <= 1 and row["label"] == str(int(probability >= threshold))
        boxes = [list(map(float, b.split())) for b in row["boxes"].split(";") if b]
        assert all(len(b) == 4 and min(b) >= 0 and b[0] + b[2] <= SIDE and b[1] + b[3] <= SIDE for b in boxes)
        confidences = [float(c) for c in row["confidences"].split(";") if c]
        assert len(confidences) == len(boxes) <= 3 and all(c >= 0.002 for c in confidences)
        if row["label"] == "0":  # the label and the boxes never disagree
            assert boxes == [] and row["area_percent"] == "" and row["area_mm2"] == ""
        else:
            assert boxes and 0 < float(row["area_percent"]) <= 100 and float(row["area_mm2"]) > 0
        assert 0 <= float(row["detector_probability"]) <= 1 and 0 <= float(row["classifier_probability"]) <= 1
    assert "trained on the synthetic phantom" in captured.out

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
    assert main(["predict", *files, "--model", str(checkpoint),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert [row["status"] for row in read_csv(out)] == ["scored", "scored"]


def test_patient_id_falls_back_to_the_file_name(checkpoint, tmp_path):
    path = tmp_path / "anonymous.dcm"
    write_dicom(path, np.full((64, 64), 90, np.uint8), patient_id="", jpeg=False)
    assert main(["predict", str(path), "--model", str(checkpoint),
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
    assert err.startswith("pneumonia predict: error: no image") and len(err.strip().splitlines()) == 1
    assert main(["predict", str(tmp_path / "missing.dcm")]) == 1
    assert "no image" in capsys.readouterr().err


def test_a_missing_path_among_good_ones_is_a_row_and_the_others_are_predicted(checkpoint, dicoms, tmp_path, capsys):
    folder, _ = dicoms
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tmp_path / "gone.dcm"), str(folder / "a.dcm"), "--model", str(checkpoint),
                 "--out", str(out)]) == 1
    rows = read_csv(out)
    assert [(r["status"], r["file"].rsplit("/", 1)[-1]) for r in rows] == [("unreadable", "gone.dcm"), ("scored", "a.dcm")]
    assert "no such file or folder" in rows[0]["reason"]
    assert "gone.dcm: no such file or folder" in capsys.readouterr().err


def test_folders_are_searched_recursively_and_sorted(dicoms):
    folder, _ = dicoms
    files, missing = find_images([folder])
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.dcm", "b.dcm", "broken.dcm", "nested/c.DCM"]
    assert missing == []


def test_a_classifier_file_is_not_the_predictor(classifier, dicoms, tmp_path, capsys):
    folder, _ = dicoms
    assert main(["predict", str(folder), "--model", str(classifier), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert "holds a 'classifier' model, not a predictor" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def answer(probability, positive, boxes=(), confidences=(), unlike=False, refused=None):
    return ImageAnswer(distance=3.5, unlike=unlike, probability=probability, positive=positive, boxes=boxes,
                       confidences=confidences, classifier_probability=0.7, detector_probability=0.9, refused=refused)


def test_csv_and_submission_formats(tmp_path):
    found = answer(0.95, True, ((50, 60, 70, 80), (10, 20, 30, 40)), (0.5, 0.9))
    predictions = [
        FilePrediction(tmp_path / "x.dcm", "P1", "scored", found, area_fraction=0.03, area_mm2=300.0),
        FilePrediction(tmp_path / "y.dcm", "P2", "scored", answer(0.1, False)),
        FilePrediction(tmp_path / "z.dcm", "z", "unreadable", reason="corrupt"),
        FilePrediction(tmp_path / "w.dcm", "W", "unlike_training", answer(None, None, unlike=True, refused="far"),
                       reason="far"),
    ]
    write_predictions_csv(tmp_path / "p.csv", predictions)
    rows = read_csv(tmp_path / "p.csv")
    assert rows[0]["boxes"] == "50.0 60.0 70.0 80.0;10.0 20.0 30.0 40.0" and rows[0]["confidences"] == "0.5000;0.9000"
    assert (rows[0]["area_percent"], rows[0]["area_mm2"], rows[0]["detector_probability"]) == ("3.00", "300", "0.9000")
    assert (rows[1]["boxes"], rows[1]["label"], rows[1]["area_percent"], rows[1]["area_mm2"]) == ("", "0", "", "")
    assert (rows[2]["status"], rows[2]["reason"], rows[2]["probability"]) == ("unreadable", "corrupt", "")
    assert (rows[3]["status"], rows[3]["probability"], rows[3]["label"], rows[3]["out_of_distribution"],
            rows[3]["ood_distance"]) == ("unlike_training", "", "", "1", "3.5")
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
    assert main(["predict", str(folder / "a.dcm"), str(abdomen), "--model", str(checkpoint), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "1 scored, 1 not chest" in captured.out
    assert captured.err.strip() == (
        f"pneumonia predict: {abdomen}: not a chest radiograph: BodyPartExamined=ABDOMEN "
        "(--allow-non-chest scores it anyway)"
    )
    rows = read_csv(out)
    assert (rows[1]["patientId"], rows[1]["status"], rows[1]["probability"]) == ("abd", "not_chest", "")
    assert "BodyPartExamined=ABDOMEN" in rows[1]["reason"]
    assert rows[0]["status"] == "scored" and rows[0]["probability"]
    args = ["predict", str(abdomen), "--model", str(checkpoint), "--out", str(out), "--allow-non-chest"]
    assert main(args) == 0
    assert read_csv(out)[0]["status"] == "scored" and read_csv(out)[0]["probability"]


def test_images_unlike_the_training_images_are_refused_unless_allowed(classifier, dicoms, tmp_path, capsys):
    """A guard whose threshold every image exceeds: each row says why, no probability, no boxes, exit 3."""
    folder, _ = dicoms
    strict = write_predictor(tmp_path / "strict.safetensors", classifier, ood_threshold=0.0)
    out, overlays = tmp_path / "pred.csv", tmp_path / "overlays"
    files = [str(folder / "a.dcm"), str(folder / "b.dcm")]
    assert main(["predict", *files, "--model", str(strict), "--out", str(out), "--overlays", str(overlays)]) == 3
    captured = capsys.readouterr()
    assert "0 scored, 2 unlike training" in captured.out
    for row in read_csv(out):
        assert (row["status"], row["probability"], row["label"], row["boxes"], row["out_of_distribution"]) == (
            "unlike_training", "", "", "", "1")
        distance = float(row["ood_distance"])
        assert row["reason"].startswith(f"unlike the training images: distance {distance:.1f} > 0.0")
    assert list(overlays.glob("*.png")) == []
    assert main(["predict", *files, "--model", str(strict), "--out", str(out), "--allow-out-of-distribution"]) == 0
    for row in read_csv(out):
        assert (row["status"], row["out_of_distribution"]) == ("scored", "1") and row["probability"]
        assert row["reason"].startswith("scored although unlike the training images")
    assert "2 scored (2 although unlike the training images)" in capsys.readouterr().out


def test_a_model_not_trained_on_the_phantom_says_nothing_of_it(classifier, dicoms, tmp_path, capsys):
    folder, _ = dicoms
    real = write_predictor(tmp_path / "real.safetensors", classifier, source="local")
    assert main(["predict", str(folder / "a.dcm"), "--model", str(real), "--out", str(tmp_path / "p.csv")]) == 0
    assert "phantom" not in capsys.readouterr().out


def test_each_file_is_read_once_with_the_model_files_windowing(checkpoint, dicoms, tmp_path, monkeypatch):
    from pneumonia.prediction import predict

    assert load_predictor(checkpoint).windowing == "auto"  # PARAMS' dicom_to_npy.windowing, passed by train
    seen = []
    original = predict.read_image_sizes

    def spy(path, sizes, **kwargs):
        seen.append((path.name, sizes, kwargs.get("windowing")))
        return original(path, sizes, **kwargs)

    monkeypatch.setattr(predict, "read_image_sizes", spy)
    folder, _ = dicoms
    main(["predict", str(folder / "a.dcm"), "--model", str(checkpoint), "--out", str(tmp_path / "p.csv"),
          "--overlays", str(tmp_path / "o")])
    assert seen == [("a.dcm", (32, 512), "auto")]  # one read: the model's input and the overlay
    assert (tmp_path / "o" / "a.png").exists()
