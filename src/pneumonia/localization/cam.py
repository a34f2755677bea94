"""The weakly-supervised baseline: the classifier's class activation maps turned into boxes and sizes.

Coordinates: every box is ``(x, y, width, height)`` with the origin at the
top-left corner, x along columns and y down rows. Boxes of a map are in that
map's pixels; boxes of an image (predicted or ground truth) are in pixels of
the ORIGINAL image (``rows`` x ``columns`` of its DICOM, 1024 x 1024 for
RSNA), like the RSNA labels. A pixel ``(row, col)`` covers ``[col, col + 1)`` x
``[row, row + 1)``, so a region spanning columns 3..5 has x = 3, width = 3.

The map of an image (Zhou et al. 2016, as ChestX-ray8 used it): the feature maps
``F_k`` of the network's last block (ResNet's ``layer4``, ``S/32`` x ``S/32`` for an
``S`` x ``S`` input; each architecture's in :mod:`pneumonia.core.architectures`) weighted
by the single logit's head weights, ``ReLU(sum_k w_k F_k)``, in the logit's units. It is upsampled bilinearly to the
original size, each cell placed where its receptive field peaks (see
:func:`cell_centres`); regions are where it reaches ``cam_threshold`` times its maximum.

Box confidence = image probability x region strength, where strength is the
region's mean map value over the map's maximum (in (cam_threshold, 1]): boxes
of a confident image on the map's hot spot rank first, which is what the RSNA
metric's descending-confidence matching rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from pneumonia.core.architectures import architecture, feature_evidence
from pneumonia.classification.classifier import LoadedModel
from pneumonia.classification.data import batches, standardize
from pneumonia.classification.inference import check_image_size
from pneumonia.evaluation.box_metrics import XYWH

@dataclass(frozen=True)
class Region:
    """A connected region of a map above the threshold.

    ``box`` in the map's pixels; ``area_fraction`` = the region's pixels / all the
    map's pixels; ``strength`` = the region's mean map value / the map's maximum.
    """

    box: tuple[int, int, int, int]
    area_fraction: float
    strength: float


@dataclass(frozen=True)
class PredictedBox:
    """A box in ORIGINAL pixels with its confidence (probability x strength) and its region's area fraction."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    area_fraction: float

    @property
    def xywh(self) -> XYWH:
        return (self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class ImageLocalization:
    """What the model says about one image.

    ``cam``: the low-resolution map (h x w, float32, >= 0, logit units);
    ``peak``: (x, y) in original pixels of the map's maximum (the centre of its
    hottest cell, where the bilinear upsampling also peaks), taken before the
    ReLU so that it is defined when the map is zero everywhere; ``boxes``: empty when
    ``probability`` is below the classification threshold; ``area_fraction``:
    the thresholded area of the kept regions over the image area (0 without
    boxes); ``area_mm2``: the same in mm², None without PixelSpacing; ``arch``: the network.
    """

    probability: float
    positive: bool
    cam: np.ndarray
    peak: tuple[float, float]
    boxes: tuple[PredictedBox, ...]
    area_fraction: float
    area_mm2: float | None
    arch: str  # the network whose map ``cam`` is: where its cells sit (upsample_map)


@torch.inference_mode()
def class_activation_maps(
    network: nn.Module, images: torch.Tensor, arch: str, temperature: float = 1.0, relu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (N,) and class activation maps (N, h, w) for standardized images (N, 1, S, S).

    One forward pass of the ``arch`` network (see
    :func:`pneumonia.core.architectures.feature_evidence`). Probability =
    sigmoid(logit / ``temperature``) (pass the checkpoint's). The map is
    ``ReLU(sum_k w_k F_k)``; ``relu=False`` returns the signed evidence before the
    ReLU (its mean plus the head's constant is the logit). That constant shifts the
    logit, not where it comes from, so it is left out of the map. Both float32.
    """
    logits, maps = feature_evidence(network, arch, images)
    return (logits / temperature).sigmoid(), torch.relu(maps) if relu else maps


def cell_centres(cells: int, input_size: int, original_size: int, arch: str) -> np.ndarray:
    """Where the map's cells along one axis are centred, in pixels of the original image (pixel k covers [k, k+1)).

    Every stride-2 layer of ResNet (conv1 7x7 pad 3, maxpool 3x3 pad 1, the 3x3
    pad 1 and 1x1 pad 0 convolutions opening layers 2-4) puts its output o on
    input pixel 2o, so ``layer4``'s cell j sits on input pixel 32j, centre 32j + 0.5
    (the peak of its receptive field), not 32j + 16, the middle of the 32-pixel
    block that a plain resize assumes. Ignoring that shifts the map by half a cell
    (an eighth of the image for a 4 x 4 map) to the right and down. Other
    architectures' offsets are derived the same way in :mod:`pneumonia.core.architectures`.
    """
    spec = architecture(arch)
    return (spec.stride * np.arange(cells) + spec.cell_offset) * original_size / input_size


def _interpolation_matrix(cells: int, input_size: int, size: int, arch: str) -> np.ndarray:
    """``size`` x ``cells`` weights of linear interpolation between the cell centres, flat beyond the outer ones."""
    centres = cell_centres(cells, input_size, size, arch)
    pixels = np.arange(size) + 0.5
    return np.stack([np.interp(pixels, centres, np.eye(cells)[j]) for j in range(cells)], axis=1)


def upsample_map(cam: np.ndarray | torch.Tensor, rows: int, columns: int, input_size: int, arch: str) -> np.ndarray:
    """Bilinear upsampling of an h x w map of an ``input_size`` x ``input_size`` input to ``rows`` x ``columns``.

    The map's values sit at the cell centres of :func:`cell_centres`; in between
    they are interpolated linearly along each axis, beyond the outer centres held
    constant (float32). torch's ``interpolate`` cannot place the samples there,
    hence the two small interpolation matrices.
    """
    cam = np.asarray(cam, dtype=np.float64)
    h, w = cam.shape
    out = _interpolation_matrix(h, input_size, rows, arch) @ cam @ _interpolation_matrix(w, input_size, columns, arch).T
    return out.astype(np.float32)


def map_peak(evidence: np.ndarray, rows: int, columns: int, input_size: int, arch: str) -> tuple[float, float]:
    """(x, y) in pixels of a ``rows`` x ``columns`` image: the centre of the map's hottest cell.

    The bilinear upsampling of :func:`upsample_map` peaks there too.
    """
    row, col = np.unravel_index(int(np.argmax(evidence)), evidence.shape)
    h, w = evidence.shape
    return float(cell_centres(w, input_size, columns, arch)[col]), float(cell_centres(h, input_size, rows, arch)[row])


def regions_from_map(cam: np.ndarray, cam_threshold: float, min_area: float) -> list[Region]:
    """Connected regions (8-connectivity) where ``cam >= cam_threshold * cam.max()``, largest first.

    Regions covering less than ``min_area`` of the map are dropped; a map that is
    zero everywhere has no regions.
    """
    cam = np.asarray(cam, dtype=np.float32)
    peak = float(cam.max(initial=0.0))
    if peak <= 0:
        return []
    labels, count = ndimage.label(cam >= cam_threshold * peak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    means = ndimage.mean(cam, labels, np.arange(1, count + 1))
    regions = []
    for slices, size, mean in zip(ndimage.find_objects(labels), sizes, means):
        fraction = float(size) / cam.size
        if fraction < min_area:
            continue
        rows, cols = slices
        box = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        regions.append(Region(box=box, area_fraction=fraction, strength=float(mean) / peak))
    return sorted(regions, key=lambda r: -r.area_fraction)


def localize_map(
    evidence: np.ndarray,
    probability: float,
    threshold: float,
    input_size: int,
    rows: int,
    columns: int,
    pixel_spacing_mm: float | None,
    cam_threshold: float,
    min_area: float,
    arch: str,
) -> ImageLocalization:
    """Boxes, size and peak of one image from its low-resolution map (see :class:`ImageLocalization`).

    ``evidence``: the map before the ReLU (``class_activation_maps(..., relu=False)``)
    of an ``input_size`` x ``input_size`` input to an ``arch`` network, rows x columns originally;
    an already rectified map gives the same result. The peak is taken before the
    ReLU, so an image with no positive evidence anywhere (a zero map, common for
    confident negatives) still points at its strongest evidence rather than at
    an arbitrary first pixel.
    """
    evidence = np.asarray(evidence, dtype=np.float32)
    cam = np.maximum(evidence, 0)
    positive = probability >= threshold
    boxes: tuple[PredictedBox, ...] = ()
    if positive:
        regions = regions_from_map(upsample_map(cam, rows, columns, input_size, arch), cam_threshold, min_area)
        boxes = tuple(
            PredictedBox(*map(float, r.box), confidence=probability * r.strength, area_fraction=r.area_fraction)
            for r in regions
        )
    area_fraction = float(sum(b.area_fraction for b in boxes))
    area_mm2 = None if pixel_spacing_mm is None else area_fraction * rows * columns * pixel_spacing_mm**2
    return ImageLocalization(
        probability=float(probability),
        positive=bool(positive),
        cam=cam,
        peak=map_peak(evidence, rows, columns, input_size, arch),
        boxes=boxes,
        area_fraction=area_fraction,
        area_mm2=area_mm2,
        arch=arch,
    )


def localize_images(
    model: LoadedModel,
    images: np.ndarray,
    sizes: Sequence[tuple[int, int, float | None]],
    threshold: float,
    cam_threshold: float,
    min_area: float,
    batch_size: int,
) -> list[ImageLocalization]:
    """Localize ``N x S x S`` uint8 images; ``sizes[i]`` = (rows, columns, pixel spacing mm or None) of the original."""
    check_image_size(model, images)
    device = next(model.network.parameters()).device
    results = []
    for where, batch in batches(images, batch_size, device):
        probs, maps = class_activation_maps(model.network, standardize(batch, model.mean, model.std), model.arch,
                                            model.temperature, relu=False)
        for prob, evidence, (rows, columns, spacing) in zip(probs.cpu().numpy(), maps.cpu().numpy(), sizes[where]):
            results.append(
                localize_map(
                    evidence, float(prob), threshold, model.image_size, rows, columns, spacing, cam_threshold,
                    min_area, model.arch,
                )
            )
    return results
