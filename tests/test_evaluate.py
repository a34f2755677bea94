"""The decide and evaluate stages' libraries on a tiny trained classifier (and an untrained detector) with a test split."""

import json
import random
from dataclasses import replace

import pytest

import torch

from pneumonia.prediction import decide
from pneumonia.evaluation import evaluate
from pneumonia.classification import train
from pneumonia.detection.detector import LoadedDetector, save_detector
from pneumonia.detection.network import build_detector
from pneumonia.data.manifest import read_manifest, split_rows, write_manifest
from project_params import project_params
from tiny_data import prepare

PARAMS = project_params(
    {
        "split": {"train_size": 0.5, "test_size": 0.25, "stratify": True},
        "dicom_to_npy": {"image_size": 32, "workers": 1},
        "train": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "temperature_scaling": True},
        "evaluate": {"bootstrap_resamples": 100},
        "decide": {"folds": 2},
    }
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = prepare(tmp_path_factory.mktemp("eval"), PARAMS, patients=48, size=128, seed=2)
    train.run(root / "processed", root / "dataset.json", PARAMS.train, seed=1,
              model_path=root / "model.safetensors", live_dir=root / "dvclive")
    torch.manual_seed(0)
    network = build_detector("resnet18", 16)
    save_detector(root / "detector.safetensors", network, LoadedDetector(
        network, "resnet18", 16, image_size=32, mean=0.4, std=0.3, image_threshold=0.5,
        box_threshold=0.3, nms_iou=0.5, max_boxes=3,
    ))
    decide.run(root / "processed", root / "model.safetensors", root / "detector.safetensors", PARAMS.decide,
               PARAMS.evaluate.target_sensitivity, PARAMS.detect.score_thresholds, "synthetic", seed=3,
               threshold_prevalence=PARAMS.detect.threshold_prevalence,
               dataset_json=root / "dataset.json", model_path=root / "pneumonia.safetensors",
               report_json=root / "decision.json")
    return root


def test_decide_compares_every_candidate_out_of_fold_and_records_its_choice(trained):
    report = json.loads((trained / "decision.json").read_text())
    compared = {(c["source"], c["method"]) for c in report["compared_out_of_fold"]}
    assert compared == {("classifier", "temperature"), ("classifier", "platt"), ("classifier", "isotonic"),
                        ("detector", "temperature"), ("detector", "platt"), ("detector", "isotonic"),
                        ("stacked", "platt")}
    best = min(report["compared_out_of_fold"], key=lambda c: c["log_loss"])
    assert (report["decision"]["source"], report["decision"]["method"]) == (best["source"], best["method"])
    assert report["trained_on"] == {"source": "synthetic", "patients": {"train": 24, "val": 12, "test": 12}}
    assert 0 <= report["ood"]["val_flagged"] <= 0.1 and report["ood"]["threshold"] > 0
    # the box threshold is tuned for the train split's prevalence (detect.threshold_prevalence: null)
    train_labels = [r.label for r in split_rows(read_manifest(trained / "processed"), "train")]
    assert report["box_threshold_prevalence"] == {"setting": None, "weighted": True,
                                                  "value": sum(train_labels) / len(train_labels)}


def evaluate_into(root, name):
    return evaluate.run(root / "processed", root / "pneumonia.safetensors", PARAMS.evaluate,
                        report_json=root / name / "eval.json", headline_json=root / name / "headline.json", plots_dir=root / name / "plots")


def test_headline_is_test_and_everything_is_chosen_on_val(trained):
    result = evaluate_into(trained, "a")
    assert result["headline_split"] == "test"
    assert result["val"]["model_selected_on_this_split"] is True
    assert result["test"]["model_selected_on_this_split"] is False
    assert result["synthetic"] and "phantom" in result["note"]
    for split in ("val", "test"):
        block = result[split]
        assert block["ci95"]["auroc"]["low"] <= block["auroc"] <= block["ci95"]["auroc"]["high"]
        cal = block["calibration"]
        assert cal["ece_15_bins_ci95"]["low"] <= cal["ece_15_bins"] <= cal["ece_15_bins_ci95"]["high"]
        assert {"brier_before_calibration", "ece_15_bins_before_calibration"} <= set(cal)
        assert set(block["candidates_auroc"]) == {"classifier", "detector", "mean_of_both", "decision"}
        assert block["out_of_distribution"]["flagged"] <= block["n"]
    unlike = result["unlike_set"]
    assert set(unlike["by_kind"]) == {"dicom_other_modality", "photograph", "noise", "blank", "inverted", "rotated",
                                      "cropped", "no_lungs"}
    assert unlike["n"] == sum(k["n"] for k in unlike["by_kind"].values()) >= 50
    for name in ("roc.json", "precision_recall.json", "operating_points.json", "reliability.json",
                 "score_histogram.json", "predictions.csv"):
        assert (trained / "a" / "plots" / name).exists(), name
    assert json.loads((trained / "a" / "eval.json").read_text()) == json.loads(json.dumps(result))


def test_shuffled_test_labels_do_not_move_the_chosen_thresholds(trained):
    before = evaluate_into(trained, "b")
    manifest = read_manifest(trained / "processed")
    test_labels = [r.label for r in manifest if r.split == "test"]
    random.Random(0).shuffle(test_labels)
    shuffled = iter(test_labels)
    write_manifest(trained / "processed" / "manifest.csv",
                   [replace(r, label=next(shuffled)) if r.split == "test" else r for r in manifest])
    try:
        after = evaluate_into(trained, "c")
    finally:
        write_manifest(trained / "processed" / "manifest.csv", manifest)
    assert after["chosen_on_val"] == before["chosen_on_val"]
    assert after["val"] == before["val"]
    assert after["test"]["operating_points"] != before["test"]["operating_points"]
