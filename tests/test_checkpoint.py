"""Checkpoints from outside: pickled code never runs, other networks and broken files are one-line errors.

Every file here is real: written by Lightning (as the train stage does) or by
``torch.save``, then changed in one way at a time.
"""

import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from pneumonia import inference, phantom
from pneumonia.__main__ import main
from pneumonia.checkpoint import load_classifier
from pneumonia.errors import DatasetError, PneumoniaError
from pneumonia.localization.cam import localize_images
from pneumonia.model import PneumoniaClassifier

SIZE = 32


def lightning_checkpoint(path: Path, image_size: int = SIZE) -> Path:
    """A checkpoint in the train stage's format (Lightning's), with random weights."""
    model = PneumoniaClassifier(image_size=image_size, mean=0.4, std=0.3)
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        max_epochs=0, accelerator="cpu",
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return lightning_checkpoint(tmp_path_factory.mktemp("good") / "model.ckpt")


@pytest.fixture(scope="module")
def contents(good) -> dict:
    """The good checkpoint's dict, to be altered and saved again (each test takes a copy)."""
    return torch.load(good, map_location="cpu", weights_only=True)


def altered(contents: dict, **changes) -> dict:
    checkpoint = dict(contents)
    checkpoint["hyper_parameters"] = dict(contents["hyper_parameters"])
    for key, value in changes.items():
        checkpoint[key] = value
    return checkpoint


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


def test_a_lightning_checkpoint_loads(good):
    """The control for everything below: the unaltered file loads."""
    model = load_classifier(good)
    assert (model.arch, model.image_size, model.mean, model.std) == ("resnet18", SIZE, 0.4, 0.3)
    assert (model.threshold, model.temperature) == (0.5, 1.0)
    assert not model.network.training


# --- pickled code ---------------------------------------------------------------------------------


class RunsShell:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class RunsPython:
    """Unpickling this runs Python code that writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


PAYLOADS = {
    "os.system in hyper_parameters": (lambda m: {"hyper_parameters": {"arch": RunsShell(m)}}, "(posix.system)"),
    "exec in state_dict": (lambda m: {"state_dict": {"network.conv1.weight": RunsPython(m)}}, "(exec)"),
    "a callable (print)": (lambda m: {"hyper_parameters": {"arch": "resnet18", "hook": print}}, "(print)"),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_pickled_code_is_refused_and_never_runs(tmp_path, contents, payload):
    make, named = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    checkpoint = altered(contents)
    for key, value in make(marker).items():
        checkpoint[key] = {**checkpoint[key], **value}
    torch.save(checkpoint, path)

    refused(path, "refused: it holds pickled Python objects " + named, "could run code")
    assert not marker.exists()


def test_the_payload_is_real(tmp_path, contents):
    """The control: loaded without weights_only, the same kind of file does run its code."""
    for kind in (RunsShell, RunsPython):
        marker = tmp_path / f"ran-{kind.__name__}"
        path = tmp_path / f"{kind.__name__}.ckpt"
        torch.save(altered(contents, extra=kind(marker)), path)
        torch.load(path, weights_only=False)
        assert marker.exists()


@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dicom") / "chest.dcm"
    phantom.write_dicom(path, np.full((64, 64), 90, np.uint8), patient_id="p1", jpeg=False)
    return path


def test_predict_cli_refuses_pickled_code(tmp_path, contents, dicom):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    checkpoint = altered(contents)
    checkpoint["hyper_parameters"]["arch"] = RunsShell(marker)
    torch.save(checkpoint, path)
    out = tmp_path / "predictions.csv"

    result = subprocess.run(
        [sys.executable, "-m", "pneumonia", "predict", str(dicom), "--model", str(path), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"pneumonia predict: error: {path}: refused: it holds pickled Python objects")
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()


def test_predict_cli_with_the_good_checkpoint(tmp_path, good, dicom, capsys):
    """The control for the CLI test: the same command with the unaltered checkpoint succeeds."""
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(dicom), "--model", str(good), "--out", str(out)]) == 0
    assert out.exists() and capsys.readouterr().err == ""


# --- another architecture -------------------------------------------------------------------------


def one_channel(net: nn.Module) -> nn.Module:
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def test_resnet34_weights_are_refused(tmp_path, contents):
    weights = one_channel(torchvision.models.resnet34(weights=None, num_classes=1)).state_dict()
    path = tmp_path / "resnet34.ckpt"
    torch.save(altered(contents, state_dict={f"network.{k}": v for k, v in weights.items()}), path)
    refused(
        path, "its weights do not fit a resnet18 classifier", "122 tensors expected",
        "96 unexpected, e.g. network.layer1.2.conv1.weight", "retrain it with `dvc repro train`",
    )


def test_imagenet_resnet18_weights_are_refused(tmp_path, contents):
    """Same names, other shapes: 3-channel conv1 and 1000 classes."""
    weights = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "imagenet.ckpt"
    torch.save(altered(contents, state_dict={f"network.{k}": v for k, v in weights.items()}), path)
    refused(
        path, "its weights do not fit a resnet18 classifier",
        "3 of another shape, e.g. network.conv1.weight is [64, 3, 7, 7], not [64, 1, 7, 7]",
    )


def test_weights_saved_without_the_lightning_prefix_are_refused(tmp_path, contents):
    weights = one_channel(torchvision.models.resnet18(weights=None, num_classes=1)).state_dict()
    path = tmp_path / "bare.ckpt"
    torch.save(altered(contents, state_dict=weights), path)
    refused(path, "its weights do not fit a resnet18 classifier", "122 missing, e.g. network.conv1.weight")


@pytest.mark.parametrize("arch", ["resnet50", "", None])
def test_unknown_architecture_is_named(tmp_path, contents, arch):
    checkpoint = altered(contents)
    checkpoint["hyper_parameters"]["arch"] = arch
    path = tmp_path / "other.ckpt"
    torch.save(checkpoint, path)
    refused(path, f"architecture {arch!r} is not one this project builds (resnet18)")


def test_missing_architecture_is_refused(tmp_path, contents):
    checkpoint = altered(contents)
    del checkpoint["hyper_parameters"]["arch"]
    path = tmp_path / "no-arch.ckpt"
    torch.save(checkpoint, path)
    refused(path, "architecture None is not one this project builds")


# --- image size -----------------------------------------------------------------------------------


def test_checkpoint_for_another_image_size_is_refused_by_every_inference_path(tmp_path):
    """Evaluate (predict_logits) and localize (localize_images) refuse 32x32 data for a 64x64 model."""
    model = load_classifier(lightning_checkpoint(tmp_path / "64.ckpt", image_size=64))
    assert model.image_size == 64
    images = np.zeros((2, SIZE, SIZE), np.uint8)
    expected = "images are 32x32 but the model was trained on 64x64; rerun dicom_to_npy and train together"
    with pytest.raises(DatasetError, match=expected):
        inference.predict_logits(model, images, batch_size=2)
    with pytest.raises(DatasetError, match=expected):
        localize_images(model, images, [(SIZE, SIZE, None)] * 2, 0.5, 0.5, 0.0, batch_size=2)
    # the control: data of the model's own size goes through both
    right = np.zeros((2, 64, 64), np.uint8)
    assert inference.predict_logits(model, right, batch_size=2).shape == (2,)
    assert len(localize_images(model, right, [(64, 64, None)] * 2, 0.5, 0.5, 0.0, batch_size=2)) == 2


@pytest.mark.parametrize("image_size", [0, -32, "32", 32.0, True, None])
def test_bad_image_size_is_refused(tmp_path, contents, image_size):
    checkpoint = altered(contents)
    checkpoint["hyper_parameters"]["image_size"] = image_size
    path = tmp_path / "size.ckpt"
    torch.save(checkpoint, path)
    refused(path, f"hyper_parameters image_size {image_size!r} is not a positive integer")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("mean", None, "hyper_parameters lack 'mean'"),
    ("std", 0.0, "hyper_parameters std 0.0 is not a positive number"),
    ("mean", float("nan"), "hyper_parameters mean nan is not a finite number"),
    ("mean", "0.4", "hyper_parameters mean '0.4' is not a finite number"),
    ("threshold", 1.5, "hyper_parameters threshold 1.5 is not in [0, 1]"),
    ("temperature", -1.0, "hyper_parameters temperature -1.0 is not a positive number"),
])
def test_bad_settings_are_refused(tmp_path, contents, key, value, words):
    checkpoint = altered(contents)
    if value is None:
        del checkpoint["hyper_parameters"][key]
    else:
        checkpoint["hyper_parameters"][key] = value
    path = tmp_path / "settings.ckpt"
    torch.save(checkpoint, path)
    refused(path, words)


# --- not a checkpoint at all ----------------------------------------------------------------------


NOT_CHECKPOINTS = {
    "text": lambda good: b"hello, this is not a checkpoint\n",
    "empty": lambda good: b"",
    "json": lambda good: b'{"hyper_parameters": {"arch": "resnet18"}}',
    "truncated to half": lambda good: good.read_bytes()[: good.stat().st_size // 2],
    "truncated to 100 bytes": lambda good: good.read_bytes()[:100],
    "last byte cut": lambda good: good.read_bytes()[:-1],
}


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint(tmp_path, good, kind):
    path = tmp_path / "model.ckpt"
    path.write_bytes(NOT_CHECKPOINTS[kind](good))
    refused(path, "not a checkpoint of this project's classifier", "retrain it with `dvc repro train`")


@pytest.mark.parametrize(("saved", "words"), [
    (torch.zeros(3), "(no hyper_parameters)"),
    ({"state_dict": {}}, "(no hyper_parameters)"),
    ([1, 2, 3], "(no hyper_parameters)"),
])
def test_a_torch_file_that_is_not_a_lightning_checkpoint(tmp_path, saved, words):
    path = tmp_path / "model.ckpt"
    torch.save(saved, path)
    refused(path, "not a checkpoint of this project's classifier", words)


def test_weights_alone_are_refused(tmp_path, contents):
    path = tmp_path / "weights.ckpt"
    torch.save(contents["state_dict"], path)
    refused(path, "not a checkpoint of this project's classifier (no hyper_parameters)")


def test_missing_state_dict_is_refused(tmp_path, contents):
    checkpoint = altered(contents)
    del checkpoint["state_dict"]
    path = tmp_path / "model.ckpt"
    torch.save(checkpoint, path)
    refused(path, "not a checkpoint of this project's classifier (no state_dict)")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    refused(tmp_path, "not a checkpoint of this project's classifier")
