"""The detector network: ResNet18's trunk, a small top-down merge to stride 8, and three heads.

Input: ``N x 1 x S x S`` standardized images (``(value/255 - mean) / std``), S a multiple of 32.
Outputs (:class:`RawDetections`), on the stride-8 grid of ``S/8 x S/8`` cells whose cell (i, j)
sits at input pixel ``((j + 0.5) * 8, (i + 0.5) * 8)`` (:func:`cell_centres`):

- ``heatmap``: logits of "a box centre is here" (CenterNet's centre heatmap), ``N x 1 x h x w``;
- ``distances``: from the cell centre to the box's left, top, right and bottom edges, in input
  pixels, ``N x 4 x h x w``, positive (softplus) (TTFNet/FCOS's edge distances);
- ``image_logit``: one logit per image from the pooled last block (pneumonia or not), ``N``.

The trunk is built by :func:`pneumonia.architectures.build_network` (the classifier's registry), randomly
initialised: nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pneumonia.architectures import build_network

STRIDE = 8  # input pixels per cell of the output grid
HEATMAP_PRIOR = 0.01  # initial centre probability everywhere (RetinaNet's prior): stable early focal loss
DETECTOR_ARCHITECTURES = ("resnet18",)


class RawDetections(NamedTuple):
    heatmap: torch.Tensor  # N x 1 x h x w logits
    distances: torch.Tensor  # N x 4 x h x w, input pixels (left, top, right, bottom)
    image_logit: torch.Tensor  # N


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class CenterNetResNet18(nn.Module):
    """ResNet18 (1-channel conv1) -> layer2/3/4 merged top-down at stride 8 -> heatmap, distances, image logit."""

    def __init__(self, width: int = 64):
        super().__init__()
        trunk = build_network("resnet18")
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1)
        self.layer2, self.layer3, self.layer4 = trunk.layer2, trunk.layer3, trunk.layer4
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (128, 256, 512))
        self.merge = _conv(width, width)
        self.heatmap = nn.Sequential(_conv(width, width), nn.Conv2d(width, 1, 1))
        self.distances = nn.Sequential(_conv(width, width), nn.Conv2d(width, 4, 1))
        self.image = nn.Linear(512, 1)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, images: torch.Tensor) -> RawDetections:
        c2 = self.layer2(self.stem(images))
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        top = self.lateral[2](c4)
        top = self.lateral[1](c3) + F.interpolate(top, size=c3.shape[-2:], mode="nearest")
        top = self.lateral[0](c2) + F.interpolate(top, size=c2.shape[-2:], mode="nearest")
        features = self.merge(top)
        # softplus: positive distances with a gradient everywhere; in strides, so the raw output is O(1).
        distances = F.softplus(self.distances(features)) * STRIDE
        image_logit = self.image(torch.flatten(F.adaptive_avg_pool2d(c4, 1), 1))[:, 0]
        return RawDetections(self.heatmap(features), distances, image_logit)


def build_detector(arch: str, width: int, neck: str = "topdown", init: str = "scratch") -> nn.Module:
    """A detector on backbone ``arch`` (see :data:`DETECTOR_ARCHITECTURES`), its trunk initialised by ``init``."""
    if arch not in DETECTOR_ARCHITECTURES or neck != "topdown" or init != "scratch":
        raise ValueError(f"unknown detector {arch!r} with neck {neck!r} and init {init!r}; "
                         f"known: {', '.join(DETECTOR_ARCHITECTURES)}, topdown, scratch")
    return CenterNetResNet18(width)


def cell_centres(cells: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Input-pixel coordinate of the centre of each of ``cells`` grid cells along one axis: (j + 0.5) * STRIDE."""
    return (torch.arange(cells, device=device, dtype=torch.float32) + 0.5) * STRIDE
