"""The predictor as ONNX models, run by ONNX Runtime: the folder ``pneumonia export --onnx DIR`` writes.

The folder (:data:`CLASSIFIER_FILE`, :data:`DETECTOR_FILE`, :data:`SETTINGS_FILE`):

- ``classifier.onnx``: input ``images``, ``batch x 1 x S x S`` float32, standardized (``(value/255 - mean)
  / std``, the classifier's mean and std; value: the uint8 image the project's DICOM reader renders at the
  classifier's ``image_size`` S); outputs ``logit`` (``batch``, before any temperature) and ``features``
  (``batch x K``, the pooled last feature map the out-of-distribution guard measures);
- ``detector.onnx``: input ``images`` as above at the detector's own size and mean/std (the classifier-size
  image resized, bilinear and antialiased); outputs the raw heads ``heatmap`` (``batch x 1 x h x w``
  logits), ``distances`` (``batch x 4 x h x w``, input pixels) and ``image_logit`` (``batch``), see
  :mod:`pneumonia.detection.network`;
- ``predictor.json``: every other number predict needs, in the layout of the predictor file's header
  (:func:`pneumonia.prediction.predictor.save_predictor`: ``classifier``, ``detector``, ``decision``,
  ``box_threshold``, ``trained_on``), every default filled in, plus the guard's mean and precision matrix
  under ``ood`` (float64, written exactly), the source model file's name and sha256, the opset, the
  input and output specification and, for a model trained on the phantom, the note saying so.

Both ONNX files carry the source's sha256 in their metadata (``pneumonia.source_sha256``): a folder
whose three files come from different model files is refused, as the predictor's single file cannot be
paired with the wrong partner.

Only the networks' forward runs in ONNX Runtime: the preprocessing (:func:`pneumonia.classification.data.standardize`,
:func:`pneumonia.detection.data.resize_images`), the box decoding (:func:`pneumonia.detection.detector.detector_boxes`,
with the flip test-time augmentation's mirror and merge when the detector has one), the calibration, the
guard and the gating (:func:`pneumonia.prediction.predictor.answers`) are the same code as with PyTorch, so the two
backends' answers differ only by the networks' float rounding (see docs/onnx.md).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pneumonia.classification.classifier import HEADER_KEYS, LoadedModel
from pneumonia.classification.data import batches, standardize
from pneumonia.prediction.decision import Decision
from pneumonia.detection.data import resize_images
from pneumonia.detection.detector import LoadedDetector, detector_boxes, to_original
from pneumonia.detection.network import RawDetections
from pneumonia.detection.tta import FlipMerge
from pneumonia.core.errors import PneumoniaError
from pneumonia.classification.inference import check_image_size
from pneumonia.prediction.ood import DISTANCE_UNITS, OodGuard
from pneumonia.prediction.predictor import Predictor, RawOutputs

FORMAT = "pneumonia-onnx/1"
CLASSIFIER_FILE = "classifier.onnx"
DETECTOR_FILE = "detector.onnx"
SETTINGS_FILE = "predictor.json"
FILES = (CLASSIFIER_FILE, DETECTOR_FILE, SETTINGS_FILE)
INPUT = "images"
CLASSIFIER_OUTPUTS = ("logit", "features")
DETECTOR_OUTPUTS = RawDetections._fields  # heatmap, distances, image_logit
SOURCE_SHA256 = "pneumonia.source_sha256"  # the ONNX files' metadata key
_EXPORT = "write it with `pneumonia export --onnx DIR`"


def predictor_settings(predictor: Predictor) -> dict[str, Any]:
    """Every number of ``predictor`` but the networks' weights, JSON-able (float64 written exactly), in the
    layout of the predictor file's header (see the module's docstring)."""
    guard = predictor.guard
    return {
        "classifier": {key: getattr(predictor.classifier, key) for key in HEADER_KEYS},
        "detector": predictor.detector.header(),
        "decision": predictor.decision.to_json(),
        "box_threshold": predictor.box_threshold,
        "trained_on": predictor.trained_on,
        "ood": {"distance": DISTANCE_UNITS, "threshold": guard.threshold, "quantile": guard.quantile,
                "mean": np.asarray(guard.mean, np.float64).tolist(),
                "precision": np.asarray(guard.precision, np.float64).tolist()}
        | ({} if guard.upright is None else {"upright": np.asarray(guard.upright, np.float64).tolist(),
                                             "upright_bias": guard.upright_bias,
                                             "upright_threshold": guard.upright_threshold}),
    }


class OnnxNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime (on the CPU): float32 tensors in, its outputs as tensors, in order."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {INPUT: np.ascontiguousarray(images.cpu().numpy(), np.float32)})
        return tuple(torch.from_numpy(output) for output in outputs)


def load_onnx_predictor(folder: str | Path) -> tuple[Predictor, Callable[..., RawOutputs]]:
    """The predictor of an export folder, its networks ONNX Runtime sessions, and its forward
    (:data:`pneumonia.prediction.predict.Forward`: :func:`raw_outputs` on its networks).

    Use the forward, not :func:`pneumonia.prediction.predictor.raw_outputs` (which runs PyTorch modules); the
    predictor's other numbers serve :func:`pneumonia.prediction.predictor.answers` as they do for the model file.
    Any problem with the folder is one line of :class:`PneumoniaError` naming it.
    """
    folder = Path(folder)
    if folder.is_file():
        raise PneumoniaError(f"{folder}: a file, not the folder of an ONNX export; --backend onnxruntime reads the "
                             f"folder `pneumonia export --onnx DIR --model {folder}` writes: give --model DIR")
    if not folder.is_dir():
        raise PneumoniaError(f"{folder}: no such folder; {_EXPORT}")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise PneumoniaError(f"{folder}: not an ONNX export of this project (no {', '.join(missing)}); {_EXPORT}")
    settings = _read_settings(folder / SETTINGS_FILE)
    sha256 = settings["source"]["sha256"]
    classifier, detector = (OnnxNetwork(_session(folder / name, sha256)) for name in (CLASSIFIER_FILE, DETECTOR_FILE))
    predictor = _predictor(folder / SETTINGS_FILE, settings, classifier, detector)
    return predictor, partial(raw_outputs, predictor.classifier, predictor.detector)


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PneumoniaError(f"{path}: unreadable as JSON ({exc}); {_EXPORT}") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        found = settings.get("format") if isinstance(settings, dict) else None
        raise PneumoniaError(f"{path}: format {found!r} is not {FORMAT!r}; export it again: {_EXPORT}")
    if not isinstance(settings.get("source"), dict) or not isinstance(settings["source"].get("sha256"), str):
        raise PneumoniaError(f"{path}: lacks the source model file's sha256; export it again: {_EXPORT}")
    return settings


def _session(path: Path, sha256: str):
    """An ONNX Runtime session of ``path`` (CPU), refused unless it was exported from the model file ``sha256``."""
    try:
        import onnxruntime
    except ImportError:
        raise PneumoniaError("--backend onnxruntime needs the onnxruntime package: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings name graph internals a user cannot act on
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...), none exported stably
        raise PneumoniaError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); export it "
                             f"again: {_EXPORT}") from None
    found = session.get_modelmeta().custom_metadata_map.get(SOURCE_SHA256)
    if found != sha256:
        raise PneumoniaError(f"{path}: exported from another model file (sha256 {found}) than {SETTINGS_FILE} "
                             f"({sha256}); export the folder again as a whole: {_EXPORT}")
    return session


def _predictor(path: Path, settings: dict[str, Any], classifier: nn.Module, detector: nn.Module) -> Predictor:
    try:
        ood = settings["ood"]
        guard = OodGuard(np.asarray(ood["mean"], np.float64), np.asarray(ood["precision"], np.float64),
                         float(ood["threshold"]), float(ood["quantile"]),
                         np.asarray(ood["upright"], np.float64) if "upright" in ood else None,
                         float(ood.get("upright_bias", 0.0)), float(ood.get("upright_threshold", -np.inf)))
        if guard.mean.ndim != 1 or guard.precision.shape != (len(guard.mean),) * 2:
            raise ValueError(f"ood mean {guard.mean.shape} and precision {guard.precision.shape} do not fit")
        detector_settings = {k: v for k, v in settings["detector"].items() if k != "stride"}  # a constant of the code
        detector_settings["tta"] = FlipMerge.from_header(path, detector_settings.get("tta"),
                                                         f"export it again: {_EXPORT}")
        return Predictor(
            classifier=LoadedModel(network=classifier.eval(), **{k: settings["classifier"][k] for k in HEADER_KEYS}),
            detector=LoadedDetector(network=detector.eval(), **detector_settings),
            decision=Decision.from_json(settings["decision"]), box_threshold=float(settings["box_threshold"]),
            guard=guard, trained_on=dict(settings["trained_on"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PneumoniaError(f"{path}: lacks or garbles {exc}; export it again: {_EXPORT}") from None


def raw_outputs(
    classifier: LoadedModel, detector: LoadedDetector, images: np.ndarray, sizes: Sequence[tuple[int, int]],
    batch_size: int,
) -> RawOutputs:
    """:func:`pneumonia.prediction.predictor.raw_outputs` with the networks run by ONNX Runtime (:class:`OnnxNetwork`).

    The same steps as :func:`pneumonia.classification.inference.classifier_outputs` and
    :func:`pneumonia.detection.detector.detect_images`, whose networks are PyTorch modules with the pooled
    features taken by a hook: here the classifier's graph returns them.
    """
    check_image_size(classifier, images)
    if not len(images):
        return RawOutputs(np.zeros(0), np.zeros((0, 0)), [])
    logits, features, detections = [], [], []
    for where, batch in batches(images, batch_size):
        logit, pooled = classifier.network(standardize(batch, classifier.mean, classifier.std))
        logits.append(logit.double().numpy())
        features.append(pooled.double().numpy())
        found = detector_boxes(detector, standardize(resize_images(batch, detector.image_size), detector.mean,
                                                     detector.std))
        detections.extend(to_original(found, sizes[where], detector.image_size))
    return RawOutputs(np.concatenate(logits), np.concatenate(features), detections)
