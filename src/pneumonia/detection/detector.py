"""The detector's model file (``models/detector.safetensors``) and detection on uint8 images.

The header (:func:`pneumonia.core.model_file.save_model`, kind ``detector``) holds everything
prediction needs: ``arch`` (the backbone), ``neck``, ``width``, ``image_size`` (model input, pixels),
``mean``/``std`` (of value/255 on the train split), ``stride``, the ``image_threshold`` and
``box_threshold`` chosen on val, ``nms_iou``, ``max_boxes`` and the ``epoch`` chosen on val; ``tta``,
when the flip test-time augmentation won on val, its merge (:mod:`.tta`; absent: none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
from pydantic import BeforeValidator, Field
from torch import nn

from pneumonia.classification.data import batches, standardize
from pneumonia.detection.data import resize_images
from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.network import STRIDE, RawDetections, build_detector
from pneumonia.core.boxes import boxes_to_original
from pneumonia.detection.tta import FlipMerge, merged_boxes, mirror_images
from pneumonia.core.errors import PneumoniaError
from pneumonia.evaluation.box_metrics import union_area
from pneumonia.core.model_file import parse_header, read_model, save_model
from pneumonia.core.architectures import ARCHITECTURES, NECKS, ArchitectureName
from pneumonia.core.validation import FiniteNumber, Header, PositiveNumber

KIND = "detector"
_RETRAIN = "retrain it with `dvc repro detect`"


def _old_arch_name(arch: Any) -> Any:
    # model files written before detect.arch named a registry backbone called this one centernet_resnet18
    return {"centernet_resnet18": "resnet18"}.get(arch, arch) if isinstance(arch, str) else arch


class DetectorHeader(Header):
    """What a detector's model file must say (:meth:`LoadedDetector.header` writes it)."""

    arch: Annotated[ArchitectureName, BeforeValidator(_old_arch_name)] = Field(
        description=f"a backbone this project builds ({', '.join(ARCHITECTURES)})")
    neck: Literal[NECKS] = "topdown"  # files from before the FPN neck
    width: int = Field(ge=1)
    image_size: int = Field(ge=32, multiple_of=32)
    mean: FiniteNumber
    std: PositiveNumber
    stride: Literal[STRIDE] = Field(description=f"{STRIDE}, this detector's")
    image_threshold: FiniteNumber
    box_threshold: FiniteNumber
    nms_iou: FiniteNumber
    max_boxes: int = Field(ge=1)
    tta: Any = None  # FlipMerge.from_header reads it (the ONNX backend's settings hold the same value)


@dataclass(frozen=True)
class LoadedDetector:
    network: nn.Module  # in eval mode
    arch: str
    width: int
    image_size: int
    mean: float
    std: float
    image_threshold: float
    box_threshold: float
    nms_iou: float
    max_boxes: int
    neck: str = "topdown"
    tta: FlipMerge | None = None  # the flip test-time augmentation's merge; None: the image alone

    def header(self, **extra: Any) -> dict[str, Any]:
        return {
            "arch": self.arch, "neck": self.neck, "width": self.width, "image_size": self.image_size, "mean": self.mean, "std": self.std,
            "stride": STRIDE, "image_threshold": self.image_threshold, "box_threshold": self.box_threshold,
            "nms_iou": self.nms_iou, "max_boxes": self.max_boxes,
            **({} if self.tta is None else {"tta": self.tta.to_json()}),  # no key without it: headers as before
            **extra,
        }


@dataclass(frozen=True)
class ImageDetections:
    """One image's boxes, UNGATED (every decoded box, most confident first), in ORIGINAL pixels.

    ``boxes``: K x 4 (x, y, width, height); ``scores``: K; ``image_probability``: the image logit's sigmoid.
    """

    boxes: np.ndarray
    scores: np.ndarray
    image_probability: float
    rows: int
    columns: int
    image_logit: float = float("nan")  # the image head's raw output, whose sigmoid is image_probability

    @property
    def max_box_score(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    def kept(self, image_threshold: float, box_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and scores kept by the gate (image probability) and the box threshold (see :mod:`.thresholds`)."""
        if self.image_probability < image_threshold:
            return self.boxes[:0], self.scores[:0]
        mask = self.scores >= box_threshold
        return self.boxes[mask], self.scores[mask]


def area_fraction(boxes: Sequence[Sequence[float]], rows: int, columns: int) -> float:
    """The area covered by (x, y, w, h) ORIGINAL-pixel boxes (overlaps once) over the image's."""
    return union_area([tuple(b) for b in boxes]) / (rows * columns)


def save_detector(path: str | Path, network: nn.Module, detector: LoadedDetector, **extra: Any) -> None:
    save_model(path, KIND, network.state_dict(), detector.header(**extra))


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> LoadedDetector:
    """The detector of a model file; any problem with it is one line of :class:`PneumoniaError` naming the file."""
    header, tensors = read_model(path, KIND, _RETRAIN)
    return build_detector_from(path, header, tensors, device)


def build_detector_from(
    path: str | Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu"
) -> LoadedDetector:
    """The detector of a model file's header and tensors (``path`` names the file in errors)."""
    settings = parse_header(path, DetectorHeader, header, _RETRAIN)
    tta = FlipMerge.from_header(path, settings.tta, _RETRAIN)
    network = build_detector(settings.arch, settings.width, settings.neck)
    try:
        network.load_state_dict(tensors)
    except RuntimeError as exc:
        raise PneumoniaError(f"{path}: its weights do not fit a {settings.arch} detector with neck {settings.neck} "
                             f"({str(exc).splitlines()[0]}); {_RETRAIN}") from None
    return LoadedDetector(network=network.to(device).eval(), tta=tta, **settings.model_dump(exclude={"stride", "tta"}))


@torch.inference_mode()
def detect_images(
    detector: LoadedDetector, images: np.ndarray, sizes: Sequence[tuple[int, int]], batch_size: int
) -> list[ImageDetections]:
    """Detect in ``N x S x S`` uint8 images (any S; resized to the model's); ``sizes[i]`` = original (rows, columns)."""
    device = next(detector.network.parameters()).device
    results = []
    for where, batch in batches(images, batch_size, device):
        batch = standardize(resize_images(batch, detector.image_size), detector.mean, detector.std)
        results.extend(to_original(detector_boxes(detector, batch), sizes[where], detector.image_size))
    return results


def detector_boxes(detector: LoadedDetector, images: torch.Tensor) -> list[ImageBoxes]:
    """The decoded boxes of a batch of standardized model-input images, merged with their mirrors' when the
    detector has the flip TTA; ``detector.network`` may be any module returning the three heads in order
    (the ONNX backend's too)."""
    forward = lambda batch: RawDetections(*detector.network(batch))  # noqa: E731
    raw = forward(images)
    if detector.tta is None:
        return decode(raw, detector.image_size, detector.max_boxes, detector.nms_iou)
    return merged_boxes(raw, forward(mirror_images(images)), detector.tta, detector.image_size, detector.max_boxes,
                        detector.nms_iou)


def to_original(found: Sequence[ImageBoxes], sizes: Sequence[tuple[int, int]], image_size: int) -> list[ImageDetections]:
    """Decoded boxes (model-input pixels) -> :class:`ImageDetections` (original pixels); ``sizes``: (rows, columns)."""
    return [
        ImageDetections(
            boxes=boxes_to_original(item.boxes.numpy(), rows, columns, image_size),
            scores=item.scores.numpy().astype(np.float64),
            image_probability=item.image_probability,
            rows=rows,
            columns=columns,
            image_logit=item.image_logit,
        )
        for item, (rows, columns) in zip(found, sizes, strict=True)
    ]
