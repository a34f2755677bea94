"""Horizontal-flip test-time augmentation (``detect.tta: hflip``): the detector run on the image and on its
mirror, the two box sets merged by NMS or by weighted boxes fusion (WBF), the merge chosen on val.

The mirror's boxes are mapped back (x -> ``image_size`` - x, MODEL-INPUT pixels) before the merge; the
stride-8 grid is symmetric under the flip (cell j's centre ``(j + 0.5) * 8`` mirrors onto cell
``w - 1 - j``'s), so a flip-equivariant network would find the same boxes twice. The merge:

- ``nms``: torchvision's NMS over the union of the two sets at IoU ``iou``: each box keeps its own
  coordinates and score;
- ``wbf``: ``ensemble_boxes.weighted_boxes_fusion`` (Solovyev et al., the RSNA and SIIM winners' merge)
  at IoU ``iou``: boxes of a cluster averaged, weighted by score; the cluster's score is the mean
  score times (views that found it) / 2, so a box only one view sees counts half.

At most ``max_boxes`` boxes are kept, most confident first; the image logit is the mean of the two views'.
:class:`FlipMerge` is the choice, kept in the detector's header under ``tta`` (absent: no TTA).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np
import torch
from pydantic import ValidationError
from torchvision.ops import nms

from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.network import RawDetections
from pneumonia.core.errors import PneumoniaError
from pneumonia.core.validation import Fraction, Strict

if TYPE_CHECKING:
    from pneumonia.detection.detector import LoadedDetector
    from pneumonia.detection.thresholds import ThresholdRule
    from pneumonia.evaluation.box_metrics import XYWH

METHODS = ("nms", "wbf")  # in the order ties go: NMS keeps the detector's own boxes and scores


class _TtaHeader(Strict):
    method: Literal[METHODS]
    iou: Fraction


@dataclass(frozen=True)
class FlipMerge:
    """Merge the mirrored image's boxes with the image's by ``method`` at IoU ``iou`` (in (0, 1))."""

    method: Literal["nms", "wbf"]
    iou: float

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "iou": self.iou}

    @classmethod
    def from_header(cls, path: str | Path, value: Any, fix: str) -> FlipMerge | None:
        """The header's ``tta`` value (None or absent: no TTA); a bad one is one line naming ``path`` and ``fix``."""
        if value is None:
            return None
        try:
            merge = _TtaHeader.model_validate(value)
        except ValidationError:
            raise PneumoniaError(f"{path}: header tta {value!r} is not null or {{\"method\": one of "
                                 f"{', '.join(METHODS)}, \"iou\": in (0, 1)}}; {fix}") from None
        return cls(merge.method, merge.iou)

    def __str__(self) -> str:
        return f"hflip merged by {self.method.upper()} at IoU {self.iou}"


def mirror_images(images: torch.Tensor) -> torch.Tensor:
    """``N x C x H x W`` images flipped left to right."""
    return torch.flip(images, dims=[-1])


def mirror_boxes(boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """``K x 4`` xyxy boxes (model-input pixels) of an image -> the same boxes on its mirror (its own inverse)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([image_size - x1, y0, image_size - x0, y1], dim=-1)


def unmirror(found: Sequence[ImageBoxes], image_size: int) -> list[ImageBoxes]:
    """The decoded boxes of mirrored images mapped back onto the images."""
    return [item._replace(boxes=mirror_boxes(item.boxes, image_size)) for item in found]


def merge_views(plain: ImageBoxes, mirrored: ImageBoxes, merge: FlipMerge, image_size: int,
                max_boxes: int) -> ImageBoxes:
    """One image's boxes from both views (``mirrored`` already mapped back), merged by ``merge``."""
    boxes, scores = torch.cat([plain.boxes, mirrored.boxes]), torch.cat([plain.scores, mirrored.scores])
    if merge.method == "nms":
        keep = nms(boxes, scores, merge.iou)  # sorted by score
        boxes, scores = boxes[keep], scores[keep]
    else:
        boxes, scores = _fuse(plain, mirrored, merge.iou, image_size)
    logit = torch.tensor([plain.image_logit, mirrored.image_logit]).mean()
    return ImageBoxes(boxes[:max_boxes], scores[:max_boxes], float(logit.sigmoid()), float(logit))


def _fuse(plain: ImageBoxes, mirrored: ImageBoxes, iou: float, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ensemble_boxes import weighted_boxes_fusion  # numba's import costs a second: only when WBF is used

    views = (plain, mirrored)
    boxes, scores, _ = weighted_boxes_fusion(
        [v.boxes.double().numpy() / image_size for v in views], [v.scores.double().numpy() for v in views],
        [np.zeros(len(v.scores)) for v in views], weights=[1, 1], iou_thr=iou, skip_box_thr=0.0,
    )
    order = np.argsort(-scores, kind="stable")
    return (torch.from_numpy(boxes[order] * image_size).to(plain.boxes.dtype).reshape(-1, 4),
            torch.from_numpy(scores[order]).to(plain.scores.dtype))


def decode_views(raw: RawDetections, raw_mirrored: RawDetections, image_size: int, max_boxes: int,
                 nms_iou: float) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    """The network's outputs on the images and on their mirrors -> both views' boxes on the images (:func:`decode`)."""
    return (decode(raw, image_size, max_boxes, nms_iou),
            unmirror(decode(raw_mirrored, image_size, max_boxes, nms_iou), image_size))


def merged_boxes(raw: RawDetections, raw_mirrored: RawDetections, merge: FlipMerge, image_size: int, max_boxes: int,
                 nms_iou: float) -> list[ImageBoxes]:
    """The network's outputs on the images and on their mirrors -> each image's merged boxes."""
    plain, mirrored = decode_views(raw, raw_mirrored, image_size, max_boxes, nms_iou)
    return [merge_views(p, m, merge, image_size, max_boxes) for p, m in zip(plain, mirrored, strict=True)]


@dataclass(frozen=True)
class FlipChoice:
    merge: FlipMerge | None  # None: no TTA won
    image_threshold: float
    box_threshold: float
    rsna_score: float
    grid: list[dict]  # every candidate: {"tta", "merge_iou", "rsna_score", "image_threshold", "box_threshold"}


def choose_flip(
    plain: Sequence[ImageBoxes], mirrored: Sequence[ImageBoxes], sizes: Sequence[tuple[int, int]], image_size: int,
    max_boxes: int, truth: Sequence[Sequence[XYWH]], rule: ThresholdRule, merge_ious: Iterable[float],
) -> FlipChoice:
    """No TTA or the (method, IoU) merge of best val RSNA score, each with its thresholds chosen on val.

    ``plain`` and ``mirrored`` (mapped back, :func:`unmirror`): val decoded once per view; ``sizes``: the
    original (rows, columns); ``truth``: original-pixel boxes; ``rule``: how each candidate's thresholds are
    chosen. Ties go to no TTA (half the forward passes),
    then to NMS (the detector's own boxes), then to the lower IoU (fewer boxes, as the thresholds' ties go).
    """
    # imported here: detector.py imports this module
    from pneumonia.detection.detector import to_original

    merges = [None, *(FlipMerge(method, iou) for method in METHODS for iou in sorted(merge_ious))]
    tried = []
    for merge in merges:
        found = plain if merge is None else [merge_views(p, m, merge, image_size, max_boxes)
                                             for p, m in zip(plain, mirrored, strict=True)]
        tried.append((merge, rule.choose(to_original(found, sizes, image_size), truth)))
    merge, best = max(tried, key=lambda t: t[1].rsna_score)  # max keeps the first of equals: the order of ties
    grid = [{"tta": "none" if m is None else m.method, "merge_iou": None if m is None else m.iou,
             "rsna_score": c.rsna_score, "image_threshold": c.image_threshold, "box_threshold": c.box_threshold}
            for m, c in tried]
    return FlipChoice(merge, best.image_threshold, best.box_threshold, best.rsna_score, grid)


@torch.no_grad()
def choose_on_val(
    detector: LoadedDetector, val_batches: Iterable, val_rows: Sequence, rule: ThresholdRule,
    merge_ious: Iterable[float], chosen: dict, device: str | torch.device = "cpu",
) -> tuple[LoadedDetector, dict]:
    """The detect stage's flip choice: val decoded with ``detector``'s network on each image and its mirror,
    :func:`choose_flip`; returns the detector with the choice and its thresholds, and the epoch's entry
    ``chosen`` with them (``tta``: the merge or None, ``tta_grid``: every candidate's score).

    ``val_batches``: the val split's batches in ``val_rows``' order, standardized model-input images first.
    """
    network = detector.network.to(device).eval()
    plain, mirrored = [], []
    for batch in val_batches:
        images = batch[0].to(device)
        found, found_mirrored = decode_views(network(images), network(mirror_images(images)), detector.image_size,
                                             detector.max_boxes, detector.nms_iou)
        plain.extend(found)
        mirrored.extend(found_mirrored)
    network.cpu()
    choice = choose_flip(plain, mirrored, [(r.rows, r.columns) for r in val_rows],
                         detector.image_size, detector.max_boxes, [r.boxes for r in val_rows], rule, merge_ious)
    for g in choice.grid:
        print(f"detect: tta {g['tta']}" + (f" at IoU {g['merge_iou']}" if g["merge_iou"] else "")
              + f": val RSNA score {g['rsna_score']:.3f}", flush=True)
    print(f"detect: tta kept: {choice.merge or 'none'}", flush=True)
    thresholds = {"image_threshold": choice.image_threshold, "box_threshold": choice.box_threshold}
    return replace(detector, tta=choice.merge, **thresholds), {
        **chosen, **thresholds, "val_rsna_score": choice.rsna_score,
        "tta": choice.merge and choice.merge.to_json(), "tta_grid": choice.grid,
    }
