"""The detector network: a registry backbone's stride-8/16/32 maps, merged to stride 8, and three heads.

Input: ``N x 1 x S x S`` standardized images (``(value/255 - mean) / std``), S a multiple of 32.
Outputs (:class:`RawDetections`), on the stride-8 grid of ``S/8 x S/8`` cells whose cell (i, j)
sits at input pixel ``((j + 0.5) * 8, (i + 0.5) * 8)``:

- ``heatmap``: logits of "a box centre is here" (CenterNet's centre heatmap), ``N x 1 x h x w``;
- ``distances``: from the cell centre to the box's left, top, right and bottom edges, in input
  pixels, ``N x 4 x h x w``, positive (softplus) (TTFNet/FCOS's edge distances);
- ``image_logit``: one logit per image from the pooled stride-32 map (pneumonia or not), ``N``.

The backbone is built by :func:`pneumonia.core.architectures.build_network` (the classifier's registry, which says
where each network's stride-8/16/32 maps are) and initialised as the classifier's is: ``scratch`` (random;
nothing is downloaded), ``imagenet`` or a state dict's path. The default, ResNet18 with the top-down neck, is
the detector this project had before any other backbone (same parameters, names and initialisation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from pneumonia.core.architectures import NECKS, Architecture, architecture, build_network
from pneumonia.core.errors import PneumoniaError

STRIDE = 8  # input pixels per cell of the output grid
HEATMAP_PRIOR = 0.01  # initial centre probability everywhere (RetinaNet's prior): stable early focal loss


class RawDetections(NamedTuple):
    heatmap: torch.Tensor  # N x 1 x h x w logits
    distances: torch.Tensor  # N x 4 x h x w, input pixels (left, top, right, bottom)
    image_logit: torch.Tensor  # N


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class CenterNet(nn.Module):
    """A registry backbone (1-channel stem) -> its stride-8/16/32 maps merged at stride 8 -> heatmap, distances,
    image logit.

    The backbone's modules are regrouped, in their order, into ``stem``, ``layer2``, ``layer3`` and ``layer4``,
    the last three ending at the stride-8, -16 and -32 maps (named after ResNet's stages, so that the default
    detector's parameters keep their names); what follows the last map (pooling, classifier) is dropped. Necks: ``topdown`` (1x1 laterals added
    top-down with nearest upsampling, one 3x3 conv) or ``fpn`` (torchvision's FeaturePyramidNetwork, its
    stride-8 output).
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, neck: str = "topdown", init: str = "scratch"):
        super().__init__()
        spec = architecture(arch)
        self.stem, self.layer2, self.layer3, self.layer4 = _stages(build_network(arch, init, param="detect.init"), spec)
        self.features_relu, self.neck = spec.features_relu, neck
        if neck == "topdown":
            self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in spec.pyramid_channels)
            self.merge = _conv(width, width)
        else:
            self.fpn = FeaturePyramidNetwork(list(spec.pyramid_channels), width)
            # The stride-16 and -32 outputs' 3x3 convs feed nothing the heads read: identities, so that every
            # parameter gets a gradient (DDP refuses parameters without one).
            for level in (1, 2):
                self.fpn.layer_blocks[level] = nn.Identity()
        self.heatmap = nn.Sequential(_conv(width, width), nn.Conv2d(width, 1, 1))
        self.distances = nn.Sequential(_conv(width, width), nn.Conv2d(width, 4, 1))
        self.image = nn.Linear(spec.pyramid_channels[2], 1)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, images: torch.Tensor) -> RawDetections:
        c2 = self.layer2(self.stem(images))
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        if self.features_relu:  # the network's functional ReLU after its last map (DenseNet)
            c4 = F.relu(c4)
        if self.neck == "topdown":
            top = self.lateral[2](c4)
            top = self.lateral[1](c3) + F.interpolate(top, size=c3.shape[-2:], mode="nearest")
            top = self.lateral[0](c2) + F.interpolate(top, size=c2.shape[-2:], mode="nearest")
            features = self.merge(top)
        else:
            features = self.fpn(OrderedDict([("8", c2), ("16", c3), ("32", c4)]))["8"]
        # softplus: positive distances with a gradient everywhere; in strides, so the raw output is O(1).
        distances = F.softplus(self.distances(features)) * STRIDE
        image_logit = self.image(torch.flatten(F.adaptive_avg_pool2d(c4, 1), 1))[:, 0]
        return RawDetections(self.heatmap(features), distances, image_logit)


def _stages(network: nn.Module, spec: Architecture) -> list[nn.Module]:
    """``network``'s modules up to its stride-32 map in four groups: before the stride-8 map's module, that module,
    up to the stride-16 map's, up to the stride-32 map's (a group of one is the module itself)."""
    parent = network.get_submodule(spec.pyramid[0].rpartition(".")[0])
    children = list(parent.named_children())
    ends = [[name for name, _ in children].index(path.rpartition(".")[2]) + 1 for path in spec.pyramid]
    groups = [children[start:end] for start, end in zip([0, ends[0] - 1, *ends[:2]], [ends[0] - 1, *ends])]
    return [group[0][1] if len(group) == 1 else nn.Sequential(*(module for _, module in group)) for group in groups]


def build_detector(arch: str, width: int, neck: str = "topdown", init: str = "scratch") -> nn.Module:
    """A detector on backbone ``arch`` (any of :data:`pneumonia.core.architectures.ARCHITECTURES`) with neck
    ``neck`` (see :data:`NECKS`), its backbone initialised by ``init`` as the classifier's (``detect.init`` in errors)."""
    if neck not in NECKS:
        raise PneumoniaError(f"unknown detector neck {neck!r}; known: {', '.join(NECKS)}")
    return CenterNet(arch, width, neck, init)
