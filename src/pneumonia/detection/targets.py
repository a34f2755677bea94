"""Training targets from boxes, and the detector's loss (CenterNet's heatmap, TTFNet's box regression).

Targets of one image on the ``h x w`` stride-8 grid, for boxes ``(x0, y0, x1, y1)`` in input pixels:

- ``heatmap`` (``1 x h x w``): for each box an elliptical Gaussian peaking at 1 on the cell holding
  its centre, sigma = ``GAUSSIAN_ALPHA`` x (box side) / 6 in cells (TTFNet); overlapping boxes take
  the maximum;
- ``box_target`` (``4 x h x w``) and ``box_weight`` (``h x w``): cells whose centres fall inside the
  box's central ``GAUSSIAN_ALPHA`` part regress that box, weighted by its Gaussian and normalised so
  that each box weighs 1 in all (where boxes overlap the smaller wins, as in TTFNet).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from pneumonia.detection.network import STRIDE, RawDetections

GAUSSIAN_ALPHA = 0.54  # TTFNet's: the Gaussian's extent relative to the box
BOX_LOSS_WEIGHT = 5.0  # TTFNet's weight of the GIoU term against the heatmap term
IMAGE_LOSS_WEIGHT = 1.0


def encode_targets(boxes: np.ndarray | torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(heatmap 1xhxw, box_target 4xhxw, box_weight hxw)`` for ``boxes`` (``B x 4`` xyxy, input pixels)."""
    cells = image_size // STRIDE
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    heatmap = np.zeros((cells, cells), np.float32)
    box_target = np.zeros((4, cells, cells), np.float32)
    box_weight = np.zeros((cells, cells), np.float32)
    owner_area = np.full((cells, cells), np.inf)
    centres = (np.arange(cells) + 0.5) * STRIDE  # input pixels
    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        col = min(int(cx // STRIDE), cells - 1)
        row = min(int(cy // STRIDE), cells - 1)
        sx = max(GAUSSIAN_ALPHA * w / STRIDE / 6, 1e-3)
        sy = max(GAUSSIAN_ALPHA * h / STRIDE / 6, 1e-3)
        j, i = np.arange(cells), np.arange(cells)
        gauss = np.exp(-((j[None, :] - col) ** 2) / (2 * sx**2) - ((i[:, None] - row) ** 2) / (2 * sy**2))
        heatmap = np.maximum(heatmap, gauss.astype(np.float32))
        half_w, half_h = GAUSSIAN_ALPHA * w / 2, GAUSSIAN_ALPHA * h / 2
        inside = (np.abs(centres[None, :] - cx) <= half_w) & (np.abs(centres[:, None] - cy) <= half_h)
        inside[row, col] = True  # a box smaller than a cell still regresses at its centre
        area = w * h
        mine = inside & (area <= owner_area)
        if not mine.any():
            continue
        weight = gauss * mine
        weight = weight / weight.sum()
        owner_area[mine] = area
        box_weight[mine] = weight[mine]
        box_target[:, mine] = np.array([x0, y0, x1, y1], np.float32)[:, None]
    return torch.from_numpy(heatmap[None]), torch.from_numpy(box_target), torch.from_numpy(box_weight)


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of peaks.

    Hand-written: torchvision's ``sigmoid_focal_loss`` has no penalty reduction of the
    negatives near a centre, ``(1 - target)^4``, which is what makes a Gaussian target work.
    """
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    peaks = target.eq(1).float()
    positive = -(log_p * (1 - p) ** 2 * peaks).sum()
    negative = -(log_not_p * p**2 * (1 - target) ** 4 * (1 - peaks)).sum()
    return (positive + negative) / peaks.sum().clamp(min=1)


def predicted_boxes(distances: torch.Tensor) -> torch.Tensor:
    """``N x 4 x h x w`` edge distances -> ``N x 4 x h x w`` boxes (x0, y0, x1, y1) in input pixels."""
    h, w = distances.shape[-2:]
    ys = (torch.arange(h, device=distances.device, dtype=distances.dtype) + 0.5) * STRIDE
    xs = (torch.arange(w, device=distances.device, dtype=distances.dtype) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # h x w each
    left, top, right, bottom = distances.unbind(1)
    return torch.stack([cx - left, cy - top, cx + right, cy + bottom], dim=1)


def detection_loss(
    raw: RawDetections, heatmap: torch.Tensor, box_target: torch.Tensor, box_weight: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{"loss", "heatmap", "box", "image"}`` for a batch: focal heatmap + GIoU on weighted cells + image BCE."""
    heat = focal_heatmap_loss(raw.heatmap.float(), heatmap)
    boxes = predicted_boxes(raw.distances.float()).permute(0, 2, 3, 1)  # N h w 4
    chosen = box_weight > 0
    if chosen.any():
        giou = generalized_box_iou_loss(boxes[chosen], box_target.permute(0, 2, 3, 1)[chosen], reduction="none")
        box = (giou * box_weight[chosen]).sum() / box_weight.sum().clamp(min=1e-6)
    else:
        box = raw.distances.sum() * 0.0  # keeps the graph (DDP wants every parameter used)
    image = F.binary_cross_entropy_with_logits(raw.image_logit.float(), labels.float())
    total = heat + BOX_LOSS_WEIGHT * box + IMAGE_LOSS_WEIGHT * image
    return {"loss": total, "heatmap": heat.detach(), "box": box.detach(), "image": image.detach()}
