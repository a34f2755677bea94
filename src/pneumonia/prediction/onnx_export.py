"""``pneumonia export --onnx DIR``: the predictor's two networks as ONNX models, and every other number as JSON.

What the folder holds, and how predict runs it, is :mod:`pneumonia.prediction.onnx_backend`'s docstring. The
networks exported are the PyTorch modules predict runs (:func:`pneumonia.prediction.predictor.load_predictor`), in
eval mode, with a dynamic batch axis; the classifier wrapped so that one graph also returns the pooled
features the out-of-distribution guard measures.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumonia.core.architectures import architecture
from pneumonia.core.atomic import atomic_dir
from pneumonia.detection.network import STRIDE
from pneumonia.core.errors import PneumoniaError
from pneumonia.prediction.onnx_backend import (
    CLASSIFIER_FILE, CLASSIFIER_OUTPUTS, DETECTOR_FILE, DETECTOR_OUTPUTS, FILES, FORMAT, INPUT, SETTINGS_FILE,
    SOURCE_SHA256, predictor_settings,
)
from pneumonia.prediction.predictor import SYNTHETIC_NOTE, Predictor, load_predictor

# The opset onnxscript's torchlib (the ops the exporter translates to) is written in: no version conversion
# runs, and every op these networks need exists in it; ONNX Runtime reads it since 1.14.
OPSET = 18
EXAMPLE_BATCH = 2  # the example input's batch; the axis is exported dynamic (any batch, 1 included)


class ClassifierOutputs(nn.Module):
    """The classifier's logit (N) and pooled features (N x K) in one forward, from ``N x 1 x S x S`` standardized
    images: what :func:`pneumonia.classification.inference.classifier_outputs` takes from the network (its forward hook on
    the registry's feature map, ReLU'd where the network applies one, averaged over the cells)."""

    def __init__(self, network: nn.Module, arch: str):
        super().__init__()
        self.network, self.spec = network, architecture(arch)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self.network.get_submodule(self.spec.features).register_forward_hook(
            lambda module, inputs, output: captured.append(output))
        try:
            logits = self.network(images).squeeze(1)
        finally:
            hook.remove()
        cells = torch.relu(captured[0]) if self.spec.features_relu else captured[0]
        return logits, cells.mean(dim=(2, 3))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model_path: str | Path, folder: str | Path) -> dict[str, Any]:
    """Write ``folder`` (replaced as a whole, atomically) from the predictor file ``model_path``; returns the
    settings written to its JSON. Raises :class:`PneumoniaError`: a bad model file, a folder holding other
    files (it would be replaced), the exporter's packages missing."""
    model_path, folder = Path(model_path), Path(folder)
    _check_folder(folder)
    predictor = load_predictor(model_path, "cpu")
    sha256 = file_sha256(model_path)
    settings = {
        "format": FORMAT,
        "source": {"file": model_path.name, "sha256": sha256},
        "note": SYNTHETIC_NOTE if predictor.synthetic else None,
        "opset": OPSET,
        "exporter": f"torch {torch.__version__}, torch.onnx.export(dynamo=True)",
        "networks": _network_specs(predictor),
    } | predictor_settings(predictor)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        size = predictor.image_size
        export_network(ClassifierOutputs(predictor.classifier.network, predictor.classifier.arch).eval(), size,
                       CLASSIFIER_OUTPUTS, tmp / CLASSIFIER_FILE,
                       {"pneumonia.network": "classifier", SOURCE_SHA256: sha256})
        export_network(predictor.detector.network, predictor.detector.image_size, DETECTOR_OUTPUTS,
                       tmp / DETECTOR_FILE, {"pneumonia.network": "detector", SOURCE_SHA256: sha256})
        (tmp / SETTINGS_FILE).write_text(_dumps(settings) + "\n")
    return settings


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise PneumoniaError(f"{folder}: a file, not a folder; give a new folder (or an earlier export) to write")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if p.name not in FILES)
        if other:
            raise PneumoniaError(f"{folder}: holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}, "
                                 "which the export would delete; give a new folder (or an earlier export)")


def _network_specs(predictor: Predictor) -> dict[str, Any]:
    """What each ONNX file takes and gives (shapes: ``batch`` is the dynamic axis)."""
    c, d = predictor.classifier, predictor.detector
    cells = d.image_size // STRIDE
    spec = lambda shape, values: {"shape": ["batch", *shape], "values": values}
    standardized = "float32, (value/255 - mean) / std with this network's mean and std, value the uint8 image"
    return {
        "classifier": {
            "file": CLASSIFIER_FILE,
            "inputs": {INPUT: spec([1, c.image_size, c.image_size], f"{standardized} rendered by the project's "
                                                                    f"DICOM reader (windowing {c.windowing!r})")},
            "outputs": {"logit": spec([], "raw logit of pneumonia, before any temperature"),
                        "features": spec([len(predictor.guard.mean)],
                                         "the pooled last feature map, what the guard's distance measures")},
        },
        "detector": {
            "file": DETECTOR_FILE,
            "inputs": {INPUT: spec([1, d.image_size, d.image_size], f"{standardized} at the classifier's size, "
                                   "resized (bilinear, antialiased) when the sizes differ")},
            "outputs": {"heatmap": spec([1, cells, cells], "logits of a box centre per cell"),
                        "distances": spec([4, cells, cells],
                                          "cell centre to box left, top, right, bottom edges, input pixels"),
                        "image_logit": spec([], "the detector's image-level logit")},
        },
    }


def export_network(
    network: nn.Module, size: int, outputs: tuple[str, ...], path: Path, metadata: dict[str, str]
) -> None:
    """``network`` (eval mode), taking ``batch x 1 x size x size`` images, as the ONNX file ``path`` (opset
    :data:`OPSET`, dynamic batch axis), its outputs named ``outputs`` and ``metadata`` in its properties."""
    # The torch.export-based exporter (dynamo=True, which needs onnxscript): torch's default since 2.9 and the
    # one maintained; the TorchScript exporter (dynamo=False) still works in torch 2.14.1 but warns that it
    # will be removed. Its progress lines go to stdout: kept out of the command's output unless it fails.
    try:
        import onnxscript  # noqa: F401  (torch imports it lazily; fail here with the fix)
    except ImportError:
        raise PneumoniaError("pneumonia export --onnx needs the onnx and onnxscript packages: "
                             "pip install onnx onnxscript") from None
    example = torch.zeros(EXAMPLE_BATCH, 1, size, size)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), torch.no_grad():
            program = torch.onnx.export(
                network, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT], output_names=list(outputs),
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
    except Exception as exc:  # the exporter's many error types; the log says where it stopped
        raise PneumoniaError(f"{path.name}: torch.onnx.export failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); its log: {log.getvalue()[-500:]!r}"
                             ) from None
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)  # one file: the weights are far below protobuf's 2 GB


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON, indented, but a list of numbers (a row of the precision matrix) on one line."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(key)}: {_dumps(item, indent + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(pad + _dumps(item, indent + 1) for item in value) + "\n" + "  " * indent + "]"
    return json.dumps(value)
