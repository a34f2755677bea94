"""Raw outputs -> scored boxes: 3x3 max-pool peaks of the heatmap, top-k, then NMS (CenterNet's decoding).

Boxes come out as ``(x0, y0, x1, y1)`` in MODEL-INPUT pixels, clipped to the image, with their
score (the heatmap's probability at the peak), most confident first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from pneumonia.detection.network import RawDetections
from pneumonia.detection.targets import predicted_boxes

MIN_SIDE = 1.0  # input pixels: a box thinner than this is no box
MIN_SCORE = 0.001  # flat background is a 3x3 "peak" too: far below any threshold, it is no box


class ImageBoxes(NamedTuple):
    boxes: torch.Tensor  # K x 4, xyxy, model-input pixels, most confident first
    scores: torch.Tensor  # K, in (0, 1)
    image_probability: float  # sigmoid of the image logit
    image_logit: float = float("nan")  # the image head's raw output (the decision calibrates it)


@torch.no_grad()
def decode(raw: RawDetections, image_size: int, max_boxes: int, nms_iou: float) -> list[ImageBoxes]:
    """At most ``max_boxes`` boxes per image (score >= ``MIN_SCORE``), after NMS at IoU ``nms_iou``."""
    heat = raw.heatmap.float().sigmoid()
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    n = heat.shape[0]
    flat = peaks.view(n, -1)
    k = min(flat.shape[1], 4 * max_boxes)  # NMS removes some: take more candidates than are kept
    scores, index = flat.topk(k, dim=1)
    boxes = predicted_boxes(raw.distances.float()).flatten(2)  # N x 4 x hw
    out = []
    for i in range(n):
        candidates = boxes[i][:, index[i]].T
        candidates = clip_boxes_to_image(candidates, (image_size, image_size))
        keep = remove_small_boxes(candidates, MIN_SIDE)
        keep = keep[scores[i][keep] >= MIN_SCORE]
        candidates, kept_scores = candidates[keep], scores[i][keep]
        keep = nms(candidates, kept_scores, nms_iou)[:max_boxes]  # sorted by score
        image_logit = raw.image_logit[i].float()
        out.append(ImageBoxes(candidates[keep].cpu(), kept_scores[keep].cpu(), float(image_logit.sigmoid()),
                              float(image_logit)))
    return out
