"""The detector's augmentation on whole batches on the model's device, the boxes moved with the images.

``detect.augment_on: device`` (``auto`` on a GPU): the loader only reads and resizes, and each train
batch is warped on the device it trains on. The ranges are the per-sample path's
(:func:`pneumonia.detection.data.box_augmentation`): a random affine (rotation +-5 degrees, vertical
shift <= 5 %, scale 0.9-1.1, nearest resampling as torchvision's default) then a random crop of
:data:`DETECTOR_CROP_SCALE` of the area with aspect :data:`DETECTOR_CROP_RATIO`, resized back.

kornia, not torchvision: torchvision's v2 transforms draw one set of parameters per call, so a batch
would share one warp; kornia's ``AugmentationSequential`` draws them per image on the device and
moves ``bbox_xyxy`` keys with the image. kornia's box corners are pixel indices (pixel ``i`` centred
on ``i``), this project's are edges (pixel ``i`` spans ``[i, i+1)``): boxes are shifted by half a
pixel on the way in and out. After the warp the boxes are clipped to the image and dropped when
under a pixel wide or tall, as the per-sample path's ``SanitizeBoundingBoxes(min_size=1)``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pneumonia.classification.data import AFFINE_DEGREES, AFFINE_SCALE, AFFINE_TRANSLATE

DETECTOR_CROP_SCALE = (0.5, 1.0)  # fraction of the area kept by the crop: shared with the per-sample path
DETECTOR_CROP_RATIO = (0.8, 1.25)  # aspect ratio range of the crop
MIN_SIDE = 1.0  # input pixels: boxes thinner than this after the warp are dropped


def batch_box_augmentation(image_size: int) -> torch.nn.Module:
    """kornia's per-image affine + resized crop of ``N x 1 x S x S`` images with ``N x B x 4`` xyxy boxes."""
    import kornia.augmentation as K  # only the device path needs it

    return K.AugmentationSequential(
        K.RandomAffine(degrees=float(AFFINE_DEGREES), translate=AFFINE_TRANSLATE, scale=AFFINE_SCALE,
                       resample="nearest", p=1.0),
        K.RandomResizedCrop((image_size, image_size), scale=DETECTOR_CROP_SCALE, ratio=DETECTOR_CROP_RATIO, p=1.0),
        data_keys=["input", "bbox_xyxy"],
    )


def pad_boxes(boxes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``B_i x 4`` boxes -> ``N x max(B_i, 1) x 4`` zero-padded and the counts ``N``."""
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
    padded = torch.zeros(len(boxes), max([1, *counts.tolist()]), 4)
    for i, b in enumerate(boxes):
        padded[i, : len(b)] = b
    return padded, counts


def augment_batch(
    augment: torch.nn.Module, images: torch.Tensor, boxes: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Warp ``images`` (N x 1 x S x S) and their padded boxes (N x B x 4, edges); return images and each image's boxes."""
    size = images.shape[-1]
    warped, moved = augment(images, boxes.to(images.device, torch.float32) - 0.5)
    moved = (moved + 0.5).clamp(0, size)
    kept = []
    for i, count in enumerate(counts.tolist()):
        b = moved[i, :count]
        kept.append(b[((b[:, 2] - b[:, 0]) >= MIN_SIDE) & ((b[:, 3] - b[:, 1]) >= MIN_SIDE)])
    return warped, kept
