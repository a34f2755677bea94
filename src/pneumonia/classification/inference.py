"""Running the classifier on arrays of images: logits and probabilities.

Input: ``N x S x S`` uint8 arrays (value/255 = intensity) of the checkpoint's
image size; they are standardized with the checkpoint's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch

from pneumonia.core.architectures import architecture
from pneumonia.classification.classifier import LoadedModel
from pneumonia.classification.data import batches, standardize
from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.calibration import probability


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_image_size(model: LoadedModel, images: np.ndarray) -> None:
    if images.shape[1:] != (model.image_size, model.image_size):
        raise DatasetError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model was trained on "
            f"{model.image_size}x{model.image_size}; rerun dicom_to_npy and train together (dvc repro)"
        )


@torch.inference_mode()
def classifier_outputs(model: LoadedModel, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N,) and pooled features (N x K: the registry's last feature map averaged over its cells,
    what the head weighs) of an ``N x S x S`` uint8 array (or memmap) of the model's image size; one pass."""
    check_image_size(model, images)
    spec = architecture(model.arch)
    device = next(model.network.parameters()).device
    logits, features = [torch.zeros(0)], [torch.zeros(0, 0)]
    captured: list[torch.Tensor] = []
    hook = model.network.get_submodule(spec.features).register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        for _, batch in batches(images, batch_size, device):
            logits.append(model.network(standardize(batch, model.mean, model.std)).squeeze(1).float().cpu())
            cells = captured.pop().float()
            features.append((torch.relu(cells) if spec.features_relu else cells).mean(dim=(2, 3)).cpu())
    finally:
        hook.remove()
    return torch.cat(logits).numpy().astype(np.float64), torch.cat(features[1:] or features).numpy().astype(np.float64)


def predict_logits(model: LoadedModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Raw logits (before temperature) for an ``N x S x S`` uint8 array (or memmap) of the model's image size."""
    return classifier_outputs(model, images, batch_size)[0]


def predict_probabilities(model: LoadedModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities, sigmoid(logit / the checkpoint's temperature)."""
    return probability(predict_logits(model, images, batch_size), model.temperature)
