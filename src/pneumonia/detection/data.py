"""The detector's dataset: split arrays, manifest boxes, box-aware augmentation, encoded targets.

Images: ``<split>.npy`` (N x S x S uint8), resized to ``image_size`` when S differs and
standardized as ``(value/255 - mean) / std``. Boxes: the manifest's (x, y, width, height) in
ORIGINAL pixels, turned into (x0, y0, x1, y1) in model-input pixels. The augmentation transforms
image and boxes together (torchvision v2 with ``tv_tensors.BoundingBoxes``): a random affine as
the classifier's (rotation +-5 degrees, vertical shift <= 5 %, scale 0.9-1.1) then a random crop
of 0.5-1 of the area resized back; boxes are clipped to the image and dropped when degenerate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from pneumonia.classification.data import AFFINE_DEGREES, AFFINE_SCALE, AFFINE_TRANSLATE, epoch_seed, standardize
from pneumonia.detection.batch_augment import DETECTOR_CROP_RATIO, DETECTOR_CROP_SCALE, pad_boxes
from pneumonia.core.boxes import boxes_to_input
from pneumonia.detection.targets import encode_targets
from pneumonia.data.manifest import ManifestRow


def box_augmentation(image_size: int) -> v2.Compose:
    """The train augmentation on ``{"image", "boxes", "labels"}`` (boxes: ``tv_tensors.BoundingBoxes`` XYXY)."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=(-AFFINE_DEGREES, AFFINE_DEGREES), translate=AFFINE_TRANSLATE, scale=AFFINE_SCALE),
            v2.RandomResizedCrop((image_size, image_size), scale=DETECTOR_CROP_SCALE, ratio=DETECTOR_CROP_RATIO,
                                 antialias=True),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0),
        ]
    )


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``N x 1 x S x S`` float images -> ``N x 1 x image_size x image_size`` (bilinear, antialiased); as is when equal."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)


class DetectionDataset(Dataset):
    """Items ``(image 1xSxS, heatmap 1xhxw, box_target 4xhxw, box_weight hxw, label)`` for training.

    ``rows`` are the split's manifest rows in array order (``split_rows``).
    """

    def __init__(
        self, array_path: str | Path, rows: Sequence[ManifestRow], image_size: int, mean: float, std: float,
        augment: bool, encode: bool = True,
    ):
        self.array_path, self.rows = str(array_path), list(rows)
        self.image_size, self.mean, self.std = image_size, mean, std
        self._array: np.ndarray | None = None
        shape = np.load(self.array_path, mmap_mode="r").shape
        if shape[0] != len(self.rows):
            raise ValueError(f"{array_path} has {shape[0]} images but the manifest lists {len(self.rows)}")
        self.transform = box_augmentation(image_size) if augment else None
        self.encode = encode  # False: items are (image, boxes, label), for the device's augmentation (collate_boxes)

    def __len__(self) -> int:
        return len(self.rows)

    def input_boxes(self, index: int) -> np.ndarray:
        """Image ``index``'s true boxes, ``B x 4`` (x0, y0, x1, y1) in model-input pixels."""
        row = self.rows[index]
        return boxes_to_input(row.boxes, row.rows, row.columns, self.image_size)

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` (1 x S x S, standardized, augmented when asked) and its boxes (B x 4 xyxy, input pixels)."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._array[index], dtype=np.float32))[None, None]
        image = standardize(resize_images(image, self.image_size)[0], self.mean, self.std)
        boxes = torch.as_tensor(self.input_boxes(index), dtype=torch.float32)
        if self.transform is not None:
            sample = self.transform(
                {
                    "image": tv_tensors.Image(image),
                    "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(self.image_size,) * 2),
                    "labels": torch.ones(len(boxes), dtype=torch.int64),
                }
            )
            image, boxes = sample["image"].as_subclass(torch.Tensor), sample["boxes"].as_subclass(torch.Tensor)
        return image, boxes

    def __getitem__(self, index: int):
        image, boxes = self.sample(index)
        label = torch.tensor(float(self.rows[index].label))
        if not self.encode:
            return image, boxes, label
        heatmap, box_target, box_weight = encode_targets(boxes.numpy(), self.image_size)
        # The label is the manifest's: a crop that cuts every box away still shows (part of) the opacity.
        return image, heatmap, box_target, box_weight, label


def collate_boxes(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unencoded items ``(image, boxes B_i x 4, label)`` -> images, zero-padded boxes, their counts, labels."""
    images, boxes, labels = zip(*items)
    padded, counts = pad_boxes(boxes)
    return torch.stack(images), padded, counts, torch.stack(labels)


class BalancedEpochSampler(Sampler[int]):
    """Each epoch: every image with boxes and ``negative_ratio`` times as many without, drawn afresh, shuffled.

    Positives are about a fifth of RSNA (and of the phantom): an epoch of all of them and as many
    negatives costs less than half a full epoch and still shows the detector both kinds. The order
    depends only on (seed, epoch): Lightning calls ``set_epoch`` before each epoch.
    """

    def __init__(self, labels: Sequence[int], negative_ratio: float, seed: int):
        labels = np.asarray(labels)
        self.positives, self.negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        self.count = min(len(self.negatives), round(negative_ratio * len(self.positives)))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positives) + self.count

    def __iter__(self):
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        chosen = np.concatenate([self.positives, rng.choice(self.negatives, size=self.count, replace=False)])
        return iter(rng.permutation(chosen).tolist())
