"""Loading the trained classifier from its model file, ``models/classifier.safetensors``.

The file is a portable model file (:mod:`pneumonia.core.model_file`): the network's
weights and a header with the architecture, image size (pixels), mean and std
(of value/255 on the train split), the decision threshold and the logit
temperature, and the ``windowing`` the training DICOMs were rendered with (a
file without it is read as ``none``, the stored range). Safetensors holds tensors and text only, so loading runs no code.
Every way a file can fail to be this project's classifier (missing, a Lightning
checkpoint from before the model-file change, another format, a bad header,
weights of another network) is one line of :class:`PneumoniaError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from pneumonia.core.errors import PneumoniaError
from pneumonia.core.architectures import ARCHITECTURES, ArchitectureName, build_network
from pneumonia.core.model_file import parse_header, read_model
from pneumonia.core.validation import FiniteNumber, Header, PositiveNumber
from pneumonia.data.dicom.rendering import WINDOWING_MODES

NETWORK_PREFIX = "network."  # the LightningModule's attribute holding the network, in its checkpoints
_RETRAIN = "retrain it with `dvc repro train`"


class ClassifierHeader(Header):
    """What a classifier's model file must say; threshold, temperature and windowing came later (their defaults
    read the files from before them as they were used)."""

    arch: ArchitectureName = Field(
        description=f"one this project builds ({', '.join(ARCHITECTURES)})")
    image_size: int = Field(ge=1, description="a positive integer")
    mean: FiniteNumber
    std: PositiveNumber
    threshold: float = Field(0.5, ge=0, le=1, description="a number in [0, 1]")
    temperature: PositiveNumber = 1.0  # probability = sigmoid(logit / temperature)
    windowing: Literal[WINDOWING_MODES] = "none"


HEADER_KEYS = tuple(ClassifierHeader.model_fields)  # what a classifier's model file holds, in this order


@dataclass(frozen=True)
class LoadedModel:
    network: nn.Module  # in eval mode; logits of shape (N, 1)
    arch: str
    image_size: int
    mean: float
    std: float
    threshold: float
    temperature: float  # probability = sigmoid(logit / temperature)
    windowing: str = "none"  # how DICOMs are rendered (pneumonia.data.dicom.rendering); models from before it: "none"


def classifier_header(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What prediction needs from a :class:`~pneumonia.classification.model.PneumoniaClassifier`'s hyper-parameters."""
    return {key: hparams[key] for key in HEADER_KEYS}


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    hparams, state = read_model(path, "classifier", _RETRAIN)
    return build_classifier(path, hparams, state, device)


def build_classifier(
    path: Path, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> LoadedModel:
    """The classifier of a model file's header and tensors (``path`` names the file in errors)."""
    settings = parse_header(path, ClassifierHeader, hparams, _RETRAIN)
    network = build_network(settings.arch)
    _load_weights(path, network, settings.arch, state)
    return LoadedModel(network=network.to(device).eval(), **settings.model_dump())


def _load_weights(path: Path, network: nn.Module, arch: str, state: Mapping[str, torch.Tensor]) -> None:
    """The model file's tensors into ``network``; any key or shape mismatch is refused."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        k for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    ]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        if reshaped:
            key = reshaped[0]
            found = list(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            problems.append(
                f"{len(reshaped)} of another shape, e.g. {key} is {found}, not {list(expected[key].shape)}"
            )
        raise PneumoniaError(
            f"{path}: its weights do not fit a {arch} classifier ({len(expected)} tensors expected; "
            f"{'; '.join(problems)}); {_RETRAIN}"
        )
    network.load_state_dict(state)
