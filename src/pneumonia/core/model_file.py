"""The portable model file: weights and the settings prediction needs, nothing else.

A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file:
the network's tensors plus one metadata entry, ``pneumonia``, a JSON object
with ``format`` (:data:`FORMAT`), ``kind`` (``classifier`` or ``detector``) and
``header``, the hyper-parameters prediction needs (architecture, image size,
mean/std, thresholds, windowing, ...). No optimizer state, no paths, no pickle:
loading it runs no code, and the same weights and header give the same bytes
wherever and whenever they are written (the JSON is written with sorted keys,
and a single metadata entry keeps safetensors' own header order fixed).

Lightning's checkpoints (with optimizer state) exist only while training, to
resume it; they are not outputs of the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pneumonia.core.atomic import atomic_path
from pneumonia.core.errors import PneumoniaError
from pneumonia.core.validation import Header, header_problem

FORMAT = "pneumonia-model/1"
_KEY = "pneumonia"


def save_model(path: str | Path, kind: str, state_dict: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> None:
    """Write ``state_dict`` (tensors, copied to contiguous CPU memory) and ``header`` (JSON-able) atomically."""
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    meta = json.dumps({"format": FORMAT, "kind": kind, "header": dict(header)}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: meta})


def read_model(path: str | Path, kind: str, retrain: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(header, tensors)`` of a model file of ``kind``; any other file is one line of :class:`PneumoniaError`.

    ``retrain`` is the advice appended to every refusal (e.g. "retrain it with `dvc repro train`").
    """
    path = Path(path)
    if not path.exists():
        raise PneumoniaError(f"{path}: model file not found; {retrain}")
    if path.is_file() and (path.suffix == ".ckpt" or _is_zip(path)):
        raise PneumoniaError(
            f"{path}: a Lightning/PyTorch checkpoint, not a portable model file (.safetensors); "
            f"model files are written by the pipeline since the model-file change: {retrain}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PneumoniaError(f"{path}: not a model file of this project (unreadable as safetensors: {exc}); {retrain}") from None
    try:
        meta = json.loads(metadata[_KEY])
    except (KeyError, json.JSONDecodeError):
        raise PneumoniaError(f"{path}: a safetensors file without this project's header; {retrain}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("header"), dict):
        raise PneumoniaError(f"{path}: model file format {meta.get('format') if isinstance(meta, dict) else None!r} "
                             f"is not {FORMAT!r}; {retrain}")
    if meta.get("kind") != kind:
        raise PneumoniaError(f"{path}: holds a {meta.get('kind')!r} model, not a {kind}; give the {kind}'s model file")
    return meta["header"], tensors


H = TypeVar("H", bound=Header)


def parse_header(path: str | Path, model: type[H], header: Mapping[str, Any], retrain: str) -> H:
    """``header`` as ``model`` (a pydantic model of the kind's header); a bad one is one line naming ``path``."""
    try:
        return model.model_validate(dict(header))
    except ValidationError as exc:
        raise PneumoniaError(f"{path}: header {header_problem(exc, model, dict(header))}; {retrain}") from None


def _is_zip(path: Path) -> bool:
    """torch.save writes a zip archive: name it rather than report a safetensors parse error."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
