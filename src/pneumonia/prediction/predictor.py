"""The predictor: everything ``pneumonia predict`` needs, in one model file (``models/pneumonia.safetensors``).

One file rather than the classifier's and the detector's side by side: the image-level decision,
its calibration, the box threshold chosen under it and the out-of-distribution guard were fitted
on those two networks' outputs, so they are valid for that pair only; one file cannot be paired
with the wrong partner. The ``decide`` stage writes it (:func:`save_predictor`) from the two model
files; its tensors are theirs (prefixed ``classifier.`` and ``detector.``) plus the guard's mean and
precision matrix; its header holds both models' headers, the decision, the box threshold, the guard's
threshold and what the models were trained on.

One answer per image, in this order (:func:`answer_images`): like the training images (the guard)?
then the decision's calibrated probability and its label, and boxes only under a positive label
(the detector's boxes scoring at least ``box_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pneumonia.classification.classifier import LoadedModel, build_classifier
from pneumonia.prediction.decision import Decision
from pneumonia.detection.detector import ImageDetections, LoadedDetector, build_detector_from, detect_images
from pneumonia.core.errors import PneumoniaError
from pneumonia.classification.inference import classifier_outputs
from pneumonia.evaluation import calibration
from pneumonia.core.model_file import read_model, save_model
from pneumonia.prediction.ood import OodGuard

KIND = "predictor"
_RETRAIN = "rebuild it with `dvc repro decide`"
SYNTHETIC_NOTE = ("trained on the synthetic phantom, not on patients: a test of the software, "
                  "not a diagnosis; never use it on patients")


@dataclass(frozen=True)
class Predictor:
    classifier: LoadedModel
    detector: LoadedDetector
    decision: Decision
    box_threshold: float  # on the detector's box score, for images the decision calls positive (chosen on val)
    guard: OodGuard
    trained_on: dict[str, Any]  # {"source": "synthetic" | "kaggle" | "local", "patients": {split: count}}

    @property
    def synthetic(self) -> bool:
        return self.trained_on.get("source") == "synthetic"

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    @property
    def windowing(self) -> str:
        return self.classifier.windowing


def save_predictor(
    path: str | Path, classifier_file: tuple[dict, dict], detector_file: tuple[dict, dict], decision: Decision,
    box_threshold: float, guard: OodGuard, trained_on: dict[str, Any],
) -> None:
    """Write the predictor from the (header, tensors) of the classifier's and the detector's model files."""
    tensors = {f"classifier.{k}": v for k, v in classifier_file[1].items()}
    tensors |= {f"detector.{k}": v for k, v in detector_file[1].items()}
    tensors["ood.mean"] = torch.from_numpy(np.asarray(guard.mean, np.float64))
    tensors["ood.precision"] = torch.from_numpy(np.asarray(guard.precision, np.float64))
    ood = {"method": "mahalanobis_pooled_features", "threshold": guard.threshold, "quantile": guard.quantile}
    if guard.upright is not None:
        tensors["ood.upright"] = torch.from_numpy(np.asarray(guard.upright, np.float64))
        ood |= {"upright_bias": guard.upright_bias, "upright_threshold": guard.upright_threshold}
    header = {
        "classifier": classifier_file[0],
        "detector": detector_file[0],
        "decision": decision.to_json(),
        "box_threshold": float(box_threshold),
        "ood": ood,
        "trained_on": trained_on,
    }
    save_model(path, KIND, tensors, header)


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The predictor of a model file; any problem is one line of :class:`PneumoniaError` naming the file."""
    path = Path(path)
    header, tensors = read_model(path, KIND, _RETRAIN)
    part = lambda prefix: {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    try:
        decision = Decision.from_json(header["decision"])
        ood = header["ood"]
        upright = part("ood.").get("upright")
        guard = OodGuard(part("ood.")["mean"].numpy(), part("ood.")["precision"].numpy(), float(ood["threshold"]),
                         float(ood["quantile"]), None if upright is None else upright.numpy(),
                         float(ood.get("upright_bias", 0.0)), float(ood.get("upright_threshold", -np.inf)))
        box_threshold = float(header["box_threshold"])
        trained_on = dict(header["trained_on"])
        classifier_header, detector_header = header["classifier"], header["detector"]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PneumoniaError(f"{path}: its header lacks or garbles {exc}; {_RETRAIN}") from None
    return Predictor(
        classifier=build_classifier(path, classifier_header, part("classifier."), device),
        detector=build_detector_from(path, detector_header, part("detector."), device),
        decision=decision, box_threshold=box_threshold, guard=guard, trained_on=trained_on,
    )


@dataclass(frozen=True)
class ImageAnswer:
    """What the predictor says about one image; boxes in ORIGINAL pixels, most confident first.

    ``probability`` is None when the image is refused as unlike the training images (``refused``
    says why) unless the caller allowed it; ``boxes`` are empty unless ``positive``.
    """

    distance: float  # the guard's score
    unlike: bool  # refused by either of the guard's checks (the distance, or the orientation check)
    probability: float | None  # the decision's calibrated probability of pneumonia
    positive: bool | None
    boxes: tuple[tuple[float, float, float, float], ...]  # (x, y, width, height)
    confidences: tuple[float, ...]  # the detector's score of each box
    classifier_probability: float  # sigmoid(logit / T) of the classifier alone: a candidate, for the record
    detector_probability: float  # the detector's own image probability: a candidate, for the record
    refused: str | None = None
    why_unlike: str = ""  # which of the guard's checks found it unlike, and by how much ("" when like)


@dataclass(frozen=True)
class RawOutputs:
    """Both networks' outputs for N images, before any decision."""

    classifier_logits: np.ndarray
    features: np.ndarray
    detections: list[ImageDetections]

    @property
    def detector_logits(self) -> np.ndarray:
        return np.array([d.image_logit for d in self.detections], np.float64)


def classifier_probability(classifier: LoadedModel, logits: np.ndarray) -> np.ndarray:
    """The classifier alone, as a candidate: sigmoid(logit / its temperature), on logits already computed.

    The formula of :func:`pneumonia.classification.inference.predict_probabilities`, which runs the network itself.
    """
    return calibration.probability(logits, classifier.temperature)


def raw_outputs(
    classifier: LoadedModel, detector: LoadedDetector, images: np.ndarray, sizes: Sequence[tuple[int, int]],
    batch_size: int,
) -> RawOutputs:
    """Both networks on ``N x S x S`` uint8 images of the classifier's size; ``sizes[i]`` = original (rows, columns)."""
    logits, features = classifier_outputs(classifier, images, batch_size)
    return RawOutputs(logits, features, detect_images(detector, images, sizes, batch_size))


def answer_images(
    predictor: Predictor, images: np.ndarray, sizes: Sequence[tuple[int, int]], batch_size: int,
    allow_unlike: bool = False,
) -> list[ImageAnswer]:
    """The predictor's answer for each image (see the module's docstring for the order of the questions)."""
    raw = raw_outputs(predictor.classifier, predictor.detector, images, sizes, batch_size)
    return answers(predictor, raw, allow_unlike)


def boxes_under(
    detections: Sequence[ImageDetections], positive: Sequence[bool], box_threshold: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, scores) each image keeps: those scoring >= ``box_threshold``, and none under a negative label."""
    return [d.kept(0.0, box_threshold) if p else (d.boxes[:0], d.scores[:0]) for d, p in zip(detections, positive)]


def answers(predictor: Predictor, raw: RawOutputs, allow_unlike: bool = False) -> list[ImageAnswer]:
    distances = predictor.guard.distance(raw.features)
    uprights = predictor.guard.upright_score(raw.features)
    flagged = predictor.guard.unlike(raw.features)
    probabilities = predictor.decision.probability(raw.classifier_logits, raw.detector_logits)
    candidate = classifier_probability(predictor.classifier, raw.classifier_logits)
    out = []
    for distance, upright, unlike, probability, classifier, found in zip(
            distances, uprights, flagged, probabilities, candidate, raw.detections):
        unlike = bool(unlike)
        why = predictor.guard.why(float(distance), float(upright)) if unlike else ""
        common = {"distance": float(distance), "unlike": unlike, "why_unlike": why,
                  "classifier_probability": float(classifier),
                  "detector_probability": float(found.image_probability)}
        if unlike and not allow_unlike:
            out.append(ImageAnswer(probability=None, positive=None, boxes=(), confidences=(),
                                   refused=why, **common))
            continue
        positive = bool(probability >= predictor.decision.threshold)
        [(boxes, scores)] = boxes_under([found], [positive], predictor.box_threshold)
        out.append(ImageAnswer(probability=float(probability), positive=positive,
                               boxes=tuple(tuple(float(v) for v in b) for b in boxes),
                               confidences=tuple(float(s) for s in scores), **common))
    return out
