"""The evaluate stage's library on a tiny trained model with a held-out test split."""

import json
import random
from dataclasses import replace

import pytest

from pneumonia import evaluate, train
from pneumonia.manifest import read_manifest, write_manifest
from project_params import project_params
from tiny_data import prepare

# One pytest-xdist worker runs this file: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("evaluate")

PARAMS = project_params(
    {
        "split": {"train_size": 0.5, "test_size": 0.25, "stratify": True},
        "dicom_to_npy": {"image_size": 32, "workers": 1},
        "train": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "temperature_scaling": True},
        "evaluate": {"bootstrap_resamples": 100},
    }
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = prepare(tmp_path_factory.mktemp("eval"), PARAMS, patients=48, size=128, seed=2)
    train.run(root / "processed", root / "dataset.json", PARAMS.train, seed=1,
              model_path=root / "model.safetensors", live_dir=root / "dvclive")
    return root


def evaluate_into(root, name):
    return evaluate.run(root / "processed", root / "model.safetensors", PARAMS.evaluate,
                        report_json=root / name / "eval.json", headline_json=root / name / "headline.json", plots_dir=root / name / "plots")


def test_headline_is_test_and_everything_is_chosen_on_val(trained):
    result = evaluate_into(trained, "a")
    assert result["headline_split"] == "test"
    assert result["val"]["model_selected_on_this_split"] is True
    assert result["test"]["model_selected_on_this_split"] is False
    assert result["temperature"] > 0
    for split in ("val", "test"):
        block = result[split]
        assert block["ci95"]["auroc"]["low"] <= block["auroc"] <= block["ci95"]["auroc"]["high"]
        assert {"brier", "ece_15_bins", "brier_before_temperature"} <= set(block["calibration"])
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
