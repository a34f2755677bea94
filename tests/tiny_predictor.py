"""A predictor model file for the plumbing tests: a trained tiny classifier (or an untrained one, where only the
plumbing after the networks is tested), an untrained detector, a hand-set decision.

What the decide stage chooses is tested on its own (test_decision, test_ood, test_pipeline); here the
numbers are set by hand so a test can say exactly what predict must do with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pneumonia.core.architectures import build_network
from pneumonia.prediction.decision import Decision
from pneumonia.detection.detector import LoadedDetector, save_detector
from pneumonia.detection.network import build_detector
from pneumonia.detection.tta import FlipMerge
from pneumonia.core.model_file import read_model, save_model
from pneumonia.prediction.ood import OodGuard
from pneumonia.prediction.predictor import save_predictor

FEATURES = 512  # ResNet18's pooled feature vector


def write_untrained_classifier(path: Path, image_size: int = 32) -> Path:
    """A classifier model file with ResNet18's seeded initial weights: what comes after the networks (the
    decision, the boxes, the outputs) is what a test of it checks, so no training is spent on it."""
    torch.manual_seed(0)
    header = {"arch": "resnet18", "image_size": image_size, "mean": 0.4, "std": 0.3, "threshold": 0.5,
              "temperature": 1.0, "windowing": "auto"}
    save_model(path, "classifier", build_network("resnet18").state_dict(), header)
    return path


def write_predictor(
    path: Path, classifier_path: Path, *, detector_size: int = 64, box_threshold: float = 0.002,
    threshold: float = 0.5, ood_threshold: float = 1e9, source: str = "synthetic", train_patients: int = 18,
    tta: FlipMerge | None = None,
) -> Path:
    """The classifier's own temperature-scaled logit as the decision (threshold ``threshold``), an untrained
    detector whose boxes all pass ``box_threshold``, and a guard that refuses an image farther than
    ``ood_threshold`` from the origin of feature space (0: every image; 1e9: none)."""
    torch.manual_seed(0)
    network = build_detector("resnet18", 16)
    detector_path = path.with_name(path.stem + "-detector.safetensors")
    save_detector(detector_path, network, LoadedDetector(
        network, "resnet18", 16, image_size=detector_size, mean=0.4, std=0.3, image_threshold=0.0,
        box_threshold=box_threshold, nms_iou=0.5, max_boxes=3, tta=tta,
    ))
    classifier_file = read_model(classifier_path, "classifier", "retrain")
    temperature = float(classifier_file[0].get("temperature", 1.0))
    decision = Decision("classifier", "temperature", (1 / temperature, 0.0), 0.0, None, threshold)
    guard = OodGuard(np.zeros(FEATURES), np.eye(FEATURES), ood_threshold, 0.99)
    save_predictor(path, classifier_file, read_model(detector_path, "detector", "retrain"), decision, box_threshold,
                   guard, {"source": source, "patients": {"train": train_patients, "val": 12, "test": 0}})
    return path
