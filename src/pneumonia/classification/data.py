"""Datasets over the memory-mapped split arrays, and the reference's augmentation.

Model input: a 1 x S x S float32 tensor, standardized as (value/255 - mean) / std
with the train split's mean and std from compute_stats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2


# The reference recipe's random affine, the one home of its ranges: the classifier's augmentation and both of the
# detector's (per sample with torchvision, per batch on the device with kornia) use these.
AFFINE_DEGREES = 5  # rotation within +-5 degrees
AFFINE_TRANSLATE = (0, 0.05)  # the reference's translate: no horizontal shift, vertical up to 5 % of the size
AFFINE_SCALE = (0.9, 1.1)
CLASSIFIER_CROP_SCALE = (0.35, 1)  # the classifier's RandomResizedCrop: fraction of the area kept (the detector keeps more)


def standardize(values: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The model's input from array values (0-255): ``(value/255 - mean) / std``; every path uses this one."""
    return (values / 255.0 - mean) / std


def as_batch(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``N x S x S`` uint8 images (an array or a memmap slice) -> ``N x 1 x S x S`` float32 on ``device``."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device).unsqueeze(1)


def batches(
    images: np.ndarray, batch_size: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Every inference loop's batching (the classifier, the CAM, the detector, the ONNX backend): ``N x S x S``
    uint8 images in runs of ``batch_size``, each as :func:`as_batch` gives it, with its slice of ``images``."""
    for start in range(0, len(images), batch_size):
        where = slice(start, start + batch_size)
        yield where, as_batch(images[where], device)


def reference_augmentation(image_size: int) -> v2.Compose:
    """The reference recipe, applied after standardization (so the affine fill is the mean).

    RandomAffine: rotation within +-5 degrees, vertical shift up to 5 % (the
    reference's translate=(0, 0.05)), scale 0.9-1.1; then RandomResizedCrop of
    0.35-1 of the area back to ``image_size``.
    """
    return v2.Compose(
        [
            v2.RandomAffine(degrees=(-AFFINE_DEGREES, AFFINE_DEGREES), translate=AFFINE_TRANSLATE, scale=AFFINE_SCALE),
            v2.RandomResizedCrop((image_size, image_size), scale=CLASSIFIER_CROP_SCALE, antialias=True),
        ]
    )


def batch_augmentation(image_size: int) -> torch.nn.Module:
    """The same recipe applied to whole N x 1 x S x S batches on their device, each image its own draw.

    torchvision's v2 transforms draw one set of parameters per call, so on a batch
    every image would get the same warp; kornia's augmentation module draws them
    per sample on the batch's device (``same_on_batch=False``), from the same
    ranges as :func:`reference_augmentation`. Nearest-neighbour resampling in the
    affine, as torchvision's RandomAffine default; zero fill (the mean, as above).
    The crop resamples bilinearly without torchvision's antialiasing.
    """
    import kornia.augmentation as K  # only the device path needs it

    return K.AugmentationSequential(
        K.RandomAffine(degrees=5.0, translate=(0.0, 0.05), scale=(0.9, 1.1), resample="nearest", p=1.0),
        K.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0), p=1.0),
    )


class XrayDataset(Dataset):
    """Images of one split (``<split>.npy``, N x S x S uint8) with their 0/1 labels.

    The array is memory-mapped lazily in each worker, so workers share the page cache.
    """

    def __init__(self, array_path: str | Path, labels: np.ndarray, mean: float, std: float, augment: bool = False):
        self.array_path = str(array_path)
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.mean, self.std = mean, std
        self._array: np.ndarray | None = None
        shape = np.load(self.array_path, mmap_mode="r").shape
        if shape[0] != len(labels):
            raise ValueError(f"{array_path} has {shape[0]} images but {len(labels)} labels were given")
        self.image_size = shape[1]
        self.transform = reference_augmentation(self.image_size) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._array[index], dtype=np.float32)).unsqueeze(0)
        image = standardize(image, self.mean, self.std)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class EpochSampler(Sampler[int]):
    """A shuffled (or, with ``weights``, class-balanced) order that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a
    checkpoint draws exactly the order an uninterrupted run would have drawn.
    Where nothing calls it (inside Lightning's DDP wrapper) each pass moves on to
    the next epoch by itself.
    """

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        return iter(order.tolist())


def epoch_seed(seed: int, epoch: int) -> int:
    """The random seed of one epoch of a run."""
    return (seed * 1_000_003 + epoch) % 2**63


def make_loader(
    dataset: XrayDataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    oversample: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader; with ``oversample`` positives and negatives are drawn equally often.

    Shuffled orders come from :class:`EpochSampler`; the loader's own generator
    (the worker seeds) is seeded too, so nothing draws from the global RNG that
    the augmentation uses.
    """
    sampler = None
    if oversample:
        labels = dataset.labels.long()
        class_weight = 1.0 / torch.bincount(labels, minlength=2).clamp(min=1).double()
        sampler = EpochSampler(len(labels), seed, weights=class_weight[labels])
    elif shuffle:
        sampler = EpochSampler(len(dataset), seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
