"""Real Lightning training on tiny phantom data: the checkpoint contract and determinism."""

import json

import numpy as np
import pytest

from pneumonia.classification import inference, train
from pneumonia.classification.classifier import load_classifier
from pneumonia.core.errors import PneumoniaError
from project_params import project_params
from tiny_data import prepare

PARAMS = project_params(
    {
        "split": {"train_size": 0.6, "test_size": 0},
        "dicom_to_npy": {"image_size": 32, "workers": 1, "grid_images": 2},
        "train": {"max_epochs": 1, "batch_size": 8, "grid_images": 2, "accelerator": "cpu"},
    }
)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("data"), PARAMS, patients=30, size=128, seed=5)


def train_once(root, name):
    out = root / name
    result = train.run(
        root / "processed", root / "dataset.json", PARAMS.train, seed=11,
        model_path=out / "model.safetensors", live_dir=out / "dvclive", grid_path=out / "augmented.png",
    )
    return out, result


@pytest.fixture(scope="module")
def trained(processed):
    return train_once(processed, "a")


def test_checkpoint_carries_what_prediction_needs(processed, trained):
    out, result = trained
    assert 0 <= result["best_val/auroc"] <= 1
    assert (out / "augmented.png").exists() and (out / "dvclive" / "metrics.json").exists()
    assert not list(out.glob(".*checkpoints*")), "temporary checkpoint folder left behind"
    model = load_classifier(out / "model.safetensors")
    data_stats = json.loads((processed / "dataset.json").read_text())
    assert (model.arch, model.image_size) == ("resnet18", 32)
    assert (model.mean, model.std) == (data_stats["mean"], data_stats["std"])
    val = np.load(processed / "processed" / "val.npy")
    probs = inference.predict_probabilities(model, val, batch_size=5)
    assert probs.shape == (12,) and np.all((probs >= 0) & (probs <= 1))


def test_same_seed_same_model_file_bytes_in_another_folder(processed, trained):
    first, _ = trained
    before = (first / "model.safetensors").read_bytes()
    again, _ = train_once(processed, "another/folder")  # the same run, written elsewhere
    # byte-identical, so DVC's hash of the model file is the same in every clone and every `dvc repro --force`
    assert (again / "model.safetensors").read_bytes() == before


def test_wrong_image_size_is_refused(trained):
    out, _ = trained
    model = load_classifier(out / "model.safetensors")
    with pytest.raises(PneumoniaError, match="trained on 32x32"):
        inference.predict_probabilities(model, np.zeros((2, 64, 64), np.uint8), batch_size=2)


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PneumoniaError, match="not a model file of this project"):
        load_classifier(path)
