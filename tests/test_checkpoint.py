"""Model files from outside: no pickle, other networks and broken files are one-line errors.

Every file here is real: written by :func:`pneumonia.core.model_file.save_model` (as the
train stage does), by safetensors or Lightning directly, or by ``torch.save``,
then changed in one way at a time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from pneumonia.classification import inference
from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.__main__ import main
from pneumonia.classification.classifier import classifier_header, load_classifier
from pneumonia.core.errors import DatasetError, PneumoniaError
from pneumonia.localization.cam import localize_images
from pneumonia.classification.model import PneumoniaClassifier
from pneumonia.core.model_file import FORMAT, read_model, save_model
from tiny_predictor import write_predictor

SIZE = 32
RETRAIN = "retrain it with `dvc repro train`"


def classifier(image_size: int = SIZE) -> PneumoniaClassifier:
    torch.manual_seed(0)
    return PneumoniaClassifier(image_size=image_size, mean=0.4, std=0.3)


def model_file(path: Path, image_size: int = SIZE, header: dict | None = None, state: dict | None = None) -> Path:
    """A model file in the train stage's format, with random weights (``header``/``state`` replace the real ones)."""
    model = classifier(image_size)
    save_model(path, "classifier", model.network.state_dict() if state is None else state,
               classifier_header(model.hparams) if header is None else header)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return model_file(tmp_path_factory.mktemp("good") / "classifier.safetensors")


@pytest.fixture(scope="module")
def header(good) -> dict:
    """The good file's header, to be altered (each test takes a copy)."""
    return read_model(good, "classifier", RETRAIN)[0]


def refused(path: Path, *patterns: str) -> str:
    """The one-line message load_classifier refuses ``path`` with; it names the file and matches ``patterns``."""
    with pytest.raises(PneumoniaError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message, message
    assert message.startswith(f"{path}: "), message
    for pattern in patterns:
        assert pattern in message, message
    # no exception chained onto it: a stage prints this line, and nothing else
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    return message


def test_a_model_file_loads(good):
    """The control for everything below: the unaltered file loads, with its settings."""
    model = load_classifier(good)
    assert (model.arch, model.image_size, model.mean, model.std) == ("resnet18", SIZE, 0.4, 0.3)
    assert (model.threshold, model.temperature) == (0.5, 1.0)
    assert not model.network.training
    expected = classifier().network.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.network.state_dict().items())


def test_the_file_holds_weights_and_settings_only(good):
    """No optimizer state, no path, nothing but tensors and one JSON header (safetensors' own layout)."""
    with open(good, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        layout = json.loads(handle.read(length))
    meta = json.loads(layout.pop("__metadata__")["pneumonia"])
    assert meta == {"format": FORMAT, "kind": "classifier", "header": {
        "arch": "resnet18", "image_size": SIZE, "mean": 0.4, "std": 0.3, "threshold": 0.5, "temperature": 1.0,
        "windowing": "none"}}
    assert set(layout) == set(classifier().network.state_dict())
    assert str(good.parent) not in good.read_bytes().decode("latin-1")
    assert good.stat().st_size < 1.01 * sum(t.numel() * t.element_size() for t in classifier().network.state_dict().values())


def test_same_weights_same_bytes_in_any_folder(tmp_path, good):
    other = model_file(tmp_path / "elsewhere" / "deeper" / "renamed.safetensors")
    assert other.read_bytes() == good.read_bytes()


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = model_file(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dicom") / "chest.dcm"
    write_dicom(path, np.full((64, 64), 90, np.uint8), patient_id="p1", jpeg=False)
    return path


def test_predict_cli_with_the_model_file(tmp_path, good, dicom, capsys):
    """The control for the refusals: the CLI runs with this model file (in a predictor, with an untrained detector)."""
    predictor = write_predictor(tmp_path / "pneumonia.safetensors", good, detector_size=SIZE, box_threshold=0.5)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(dicom), "--model", str(predictor), "--out", str(out)]) == 0
    assert out.exists() and capsys.readouterr().err == ""


def lightning_checkpoint(path: Path) -> Path:
    """What the train stage wrote before the model file: Lightning's checkpoint, optimizer state and all."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=0, accelerator="cpu")
    trainer.strategy.connect(classifier())
    trainer.save_checkpoint(path)
    return path


def test_an_old_lightning_checkpoint_gets_a_one_line_explanation(tmp_path, dicom):
    path = lightning_checkpoint(tmp_path / "model.ckpt")
    refused(path, "a Lightning/PyTorch checkpoint, not a portable model file (.safetensors)", RETRAIN)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(path.read_bytes())  # a checkpoint under the new name: still recognised
    refused(renamed, "a Lightning/PyTorch checkpoint, not a portable model file")

    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "pneumonia", "predict", str(dicom), "--model", str(path), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"pneumonia predict: error: {path}: ")
    assert not out.exists()


# --- another network -------------------------------------------------------------------------------


def one_channel(net: nn.Module) -> nn.Module:
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def test_resnet34_weights_are_refused(tmp_path):
    weights = one_channel(torchvision.models.resnet34(weights=None, num_classes=1)).state_dict()
    path = model_file(tmp_path / "resnet34.safetensors", state=weights)
    refused(path, "its weights do not fit a resnet18 classifier", "122 tensors expected",
            "96 unexpected, e.g. layer1.2.", RETRAIN)


def test_imagenet_resnet18_weights_are_refused(tmp_path):
    """Same names, other shapes: 3-channel conv1 and 1000 classes."""
    path = model_file(tmp_path / "imagenet.safetensors", state=torchvision.models.resnet18(weights=None).state_dict())
    refused(path, "3 of another shape, e.g. conv1.weight is [64, 3, 7, 7], not [64, 1, 7, 7]")


def test_a_detector_file_is_not_a_classifier(tmp_path):
    path = tmp_path / "detector.safetensors"
    save_model(path, "detector", {"w": torch.zeros(1)}, {})
    refused(path, "holds a 'detector' model, not a classifier")


@pytest.mark.parametrize("arch", ["vgg16", "", None])
def test_unknown_architecture_is_named(tmp_path, header, arch):
    path = model_file(tmp_path / "other.safetensors", header={**header, "arch": arch})
    refused(path, f"header arch {arch!r} is not one this project builds (resnet18, resnet34, resnet50, ")


def test_a_header_naming_another_known_architecture_than_its_weights_is_refused(tmp_path, header):
    path = model_file(tmp_path / "other.safetensors", header={**header, "arch": "resnet50"})
    refused(path, "its weights do not fit a resnet50 classifier")


def test_checkpoint_for_another_image_size_is_refused_by_every_inference_path(tmp_path):
    """Evaluate (predict_logits) and localize (localize_images) refuse 32x32 data for a 64x64 model."""
    model = load_classifier(model_file(tmp_path / "64.safetensors", image_size=64))
    assert model.image_size == 64
    images = np.zeros((2, SIZE, SIZE), np.uint8)
    expected = "images are 32x32 but the model was trained on 64x64; rerun dicom_to_npy and train together"
    with pytest.raises(DatasetError, match=expected):
        inference.predict_logits(model, images, batch_size=2)
    with pytest.raises(DatasetError, match=expected):
        localize_images(model, images, [(SIZE, SIZE, None)] * 2, 0.5, 0.5, 0.0, batch_size=2)
    right = np.zeros((2, 64, 64), np.uint8)  # the control: data of the model's own size goes through both
    assert inference.predict_logits(model, right, batch_size=2).shape == (2,)
    assert len(localize_images(model, right, [(64, 64, None)] * 2, 0.5, 0.5, 0.0, batch_size=2)) == 2


@pytest.mark.parametrize("image_size", [0, -32, "32", 32.0, True, None])
def test_bad_image_size_is_refused(tmp_path, header, image_size):
    path = model_file(tmp_path / "size.safetensors", header={**header, "image_size": image_size})
    refused(path, f"header image_size {image_size!r} is not a positive integer")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("mean", None, "header lacks 'mean'"),
    ("std", 0.0, "header std 0.0 is not a positive number"),
    ("mean", "0.4", "header mean '0.4' is not a finite number"),
    ("threshold", 1.5, "header threshold 1.5 is not a number in [0, 1]"),
    ("windowing", "soft", "header windowing 'soft' is not auto or none"),
    ("temperature", -1.0, "header temperature -1.0 is not a positive number"),
])
def test_bad_settings_are_refused(tmp_path, header, key, value, words):
    changed = {k: v for k, v in header.items() if k != key or value is not None}
    if value is not None:
        changed[key] = value
    refused(model_file(tmp_path / "settings.safetensors", header=changed), words)


def test_a_non_finite_setting_is_refused(tmp_path, header):
    """JSON has no NaN; Python's json writes one anyway. It never becomes a silent NaN mean."""
    path = model_file(tmp_path / "nan.safetensors", header={**header, "mean": float("nan")})
    refused(path, "header mean nan is not a finite number")


# --- not a model file at all ----------------------------------------------------------------------


NOT_MODEL_FILES = {
    "text": lambda good: b"hello, this is not a model\n",
    "empty": lambda good: b"",
    "json": lambda good: b'{"header": {"arch": "resnet18"}}',
    "truncated to half": lambda good: good.read_bytes()[: good.stat().st_size // 2],
    "truncated to 100 bytes": lambda good: good.read_bytes()[:100],
    "last byte cut": lambda good: good.read_bytes()[:-1],
}


@pytest.mark.parametrize("kind", list(NOT_MODEL_FILES))
def test_a_file_that_is_not_a_model_file(tmp_path, good, kind):
    path = tmp_path / "model.safetensors"
    path.write_bytes(NOT_MODEL_FILES[kind](good))
    refused(path, "not a model file of this project", RETRAIN)


def test_safetensors_without_our_header_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(classifier().network.state_dict(), str(path))
    refused(path, "a safetensors file without this project's header", RETRAIN)


def test_another_format_version_is_refused(tmp_path, header):
    path = tmp_path / "future.safetensors"
    meta = json.dumps({"format": "pneumonia-model/99", "kind": "classifier", "header": header})
    save_file(classifier().network.state_dict(), str(path), metadata={"pneumonia": meta})
    refused(path, "model file format 'pneumonia-model/99' is not 'pneumonia-model/1'")


def test_a_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save(classifier().network.state_dict(), path)
    refused(path, "a Lightning/PyTorch checkpoint, not a portable model file")


def test_missing_file_and_folder(tmp_path):
    refused(tmp_path / "nothing.safetensors", "model file not found", RETRAIN)
    refused(tmp_path, "not a model file of this project")
