"""Loading the trained classifier from ``models/model.ckpt``.

The checkpoint is Lightning's own (so training can resume from it); its
``hyper_parameters`` hold the architecture, image size (pixels), mean and std
(of value/255 on the train split) and the decision threshold. It is loaded with
``weights_only=True``: a checkpoint that carries pickled code is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pneumonia.errors import PneumoniaError
from pneumonia.model import build_network

_PREFIX = "network."


@dataclass(frozen=True)
class LoadedModel:
    network: nn.Module  # in eval mode; logits of shape (N, 1)
    arch: str
    image_size: int
    mean: float
    std: float
    threshold: float
    temperature: float  # probability = sigmoid(logit / temperature)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise PneumoniaError(f"{path}: checkpoint not found; train one with `dvc repro train`")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        arch, image_size = hparams["arch"], int(hparams["image_size"])
        state = {k[len(_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(_PREFIX)}
        network = build_network(arch)
        network.load_state_dict(state)
    except PneumoniaError:
        raise
    except Exception as exc:
        raise PneumoniaError(
            f"{path}: not a checkpoint of this project's classifier ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "retrain it with `dvc repro train`"
        ) from None
    return LoadedModel(
        network=network.to(device).eval(),
        arch=arch,
        image_size=image_size,
        mean=float(hparams["mean"]),
        std=float(hparams["std"]),
        threshold=float(hparams.get("threshold", 0.5)),
        temperature=float(hparams.get("temperature", 1.0)),
    )
