"""Loading the trained classifier from ``models/model.ckpt``.

The checkpoint is Lightning's own (so training can resume from it); its
``hyper_parameters`` hold the architecture, image size (pixels), mean and std
(of value/255 on the train split) and the decision threshold. It is loaded with
``weights_only=True``: a checkpoint that carries pickled code is refused before
anything in it runs. Every way a file can fail to be this project's checkpoint
(unreadable, pickled objects, missing or bad hyperparameters, weights of another
network) is one line of :class:`PneumoniaError` naming the file.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pneumonia.errors import PneumoniaError
from pneumonia.model import ARCHITECTURES, build_network
from pneumonia.rendering import WINDOWING_MODES

_PREFIX = "network."
_RETRAIN = "retrain it with `dvc repro train`"


@dataclass(frozen=True)
class LoadedModel:
    network: nn.Module  # in eval mode; logits of shape (N, 1)
    arch: str
    image_size: int
    mean: float
    std: float
    threshold: float
    temperature: float  # probability = sigmoid(logit / temperature)
    windowing: str = "none"  # how DICOMs are rendered (pneumonia.rendering); models from before it: "none"


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise PneumoniaError(f"{path}: checkpoint not found; train one with `dvc repro train`")
    checkpoint = _read(path, device)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("hyper_parameters"), Mapping):
        raise PneumoniaError(
            f"{path}: not a checkpoint of this project's classifier (no hyper_parameters); {_RETRAIN}"
        )
    hparams = checkpoint["hyper_parameters"]
    arch = hparams.get("arch")
    if arch not in ARCHITECTURES:
        raise PneumoniaError(
            f"{path}: architecture {arch!r} is not one this project builds ({', '.join(ARCHITECTURES)}); {_RETRAIN}"
        )
    image_size = hparams.get("image_size")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise PneumoniaError(
            f"{path}: hyper_parameters image_size {image_size!r} is not a positive integer; {_RETRAIN}"
        )
    mean = _number(path, hparams, "mean")
    std = _number(path, hparams, "std", positive=True)
    threshold = _number(path, hparams, "threshold", default=0.5)
    if not 0 <= threshold <= 1:
        raise PneumoniaError(f"{path}: hyper_parameters threshold {threshold!r} is not in [0, 1]; {_RETRAIN}")
    temperature = _number(path, hparams, "temperature", default=1.0, positive=True)
    windowing = hparams.get("windowing", "none")
    if windowing not in WINDOWING_MODES:
        raise PneumoniaError(
            f"{path}: hyper_parameters windowing {windowing!r} is not one of {', '.join(WINDOWING_MODES)}; {_RETRAIN}"
        )

    network = build_network(arch)
    _load_weights(path, network, arch, checkpoint.get("state_dict"))
    return LoadedModel(
        network=network.to(device).eval(),
        arch=arch,
        image_size=image_size,
        mean=mean,
        std=std,
        threshold=threshold,
        temperature=temperature,
        windowing=windowing,
    )


def _read(path: Path, device: str | torch.device):
    """``torch.load`` with weights only; its failures as one line that never advises unsafe loading."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if "Weights only load failed" in text and found:
            raise PneumoniaError(
                f"{path}: refused: it holds pickled Python objects ({found.group(1)}), not only weights and "
                "settings, and loading them could run code; use a checkpoint made by `dvc repro train`"
            ) from None
        # Any other refusal of the weights-only unpickler: a pickle stream it cannot read at all.
        operand = re.search(r"Unsupported operand \S+", text)
        reason = f"UnpicklingError: {operand.group(0)}" if operand else _one_line(exc)
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... for other files
        reason = _one_line(exc)
    raise PneumoniaError(
        f"{path}: not a checkpoint of this project's classifier (unreadable as a PyTorch checkpoint: {reason}; "
        f"truncated, or another kind of file); {_RETRAIN}"
    )


def _number(path: Path, hparams: Mapping, key: str, default: float | None = None, positive: bool = False) -> float:
    value = hparams.get(key, default)
    if value is None:
        raise PneumoniaError(f"{path}: hyper_parameters lack {key!r}; {_RETRAIN}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        positive and value <= 0
    ):
        kind = "a positive number" if positive else "a finite number"
        raise PneumoniaError(f"{path}: hyper_parameters {key} {value!r} is not {kind}; {_RETRAIN}")
    return float(value)


def _load_weights(path: Path, network: nn.Module, arch: str, state_dict) -> None:
    """The checkpoint's ``network.*`` tensors into ``network``; any key or shape mismatch is refused."""
    if not isinstance(state_dict, Mapping):
        raise PneumoniaError(f"{path}: not a checkpoint of this project's classifier (no state_dict); {_RETRAIN}")
    state = {k[len(_PREFIX) :]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(_PREFIX)}
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
            problems.append(f"{len(missing)} missing, e.g. {_PREFIX}{missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected, e.g. {_PREFIX}{unexpected[0]}")
        if reshaped:
            key = reshaped[0]
            found = list(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            problems.append(
                f"{len(reshaped)} of another shape, e.g. {_PREFIX}{key} is {found}, not {list(expected[key].shape)}"
            )
        raise PneumoniaError(
            f"{path}: its weights do not fit a {arch} classifier ({len(expected)} tensors expected; "
            f"{'; '.join(problems)}); {_RETRAIN}"
        )
    network.load_state_dict(state)


def _one_line(exc: BaseException) -> str:
    """``Type: first sentence of the first line`` of an exception, at most 120 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0].strip()
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
