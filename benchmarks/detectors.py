"""Which detector: the CenterNet-style head on ResNet18 against torchvision's FCOS with a slim ResNet18-FPN.

Both train from scratch on the processed arrays and reports/dataset.json (``dvc repro compute_stats`` first) with the same
data, augmentation, balanced epochs and AdamW, for the same number of epochs; the classifier's step
is timed beside them. Each is scored on val at its best (image, box) threshold pair: RSNA score and
AP@0.5. CPU time is the process's own (``time.process_time``), so other load on the machine does
not inflate it. Writes benchmarks/detectors.json.

    python benchmarks/detectors.py --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pneumonia.detection.data import BalancedEpochSampler, DetectionDataset
from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.detector import to_original
from pneumonia.detection.evaluate_detection import average_precision
from pneumonia.detection.network import build_detector
from pneumonia.detection.targets import detection_loss
from pneumonia.detection.thresholds import choose_box_thresholds
from pneumonia.data.manifest import read_manifest, split_rows
from pneumonia.core.architectures import build_network

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def fcos_slim(image_size: int) -> FCOS:
    """FCOS on a ResNet18-FPN (64 channels, P3-P7) with one conv per head branch; trainable BatchNorm everywhere.

    torchvision's defaults would freeze BatchNorm and the early layers (made for pretrained weights) and
    rescale every image to 800 pixels: both are overridden.
    """
    trunk = build_network("resnet18")
    backbone = _resnet_fpn_extractor(trunk, trainable_layers=5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(64, 64))
    # Slim: 64 channels instead of torchvision's fixed 256 (the FPN calls these blocks as plain modules).
    backbone.fpn.inner_blocks = nn.ModuleList(nn.Conv2d(c, 64, 1) for c in (128, 256, 512))
    backbone.fpn.layer_blocks = nn.ModuleList(nn.Conv2d(64, 64, 3, padding=1) for _ in range(3))
    backbone.out_channels = 64
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((1.0,),) * 5)
    return FCOS(backbone, num_classes=2, min_size=image_size, max_size=image_size, image_mean=[0.0], image_std=[1.0],
                anchor_generator=anchors, head=FCOSHead(64, 1, 2, num_convs=1), detections_per_img=4,
                score_thresh=0.01, nms_thresh=0.3)


def train_and_score(kind: str, train_set, val_set, val_rows, epochs: int, lr: float, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    size = train_set.image_size
    model = build_detector("resnet18", 64) if kind == "centernet" else fcos_slim(size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sampler = BalancedEpochSampler([r.label for r in train_set.rows], 1.0, seed)
    cpu, steps = 0.0, 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        model.train()
        start = time.process_time()
        for first in range(0, len(order), batch):
            index = order[first : first + batch]
            if kind == "centernet":
                items = [train_set[i] for i in index]
                parts = [torch.stack([item[k] for item in items]) for k in range(5)]
                loss = detection_loss(model(parts[0]), *parts[1:])["loss"]
            else:
                samples = [train_set.sample(i) for i in index]
                targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for _, b in samples]
                loss = sum(model([s for s, _ in samples], targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        cpu += time.process_time() - start
    model.eval()
    found = []
    with torch.no_grad():
        for first in range(0, len(val_set), 64):
            images = torch.stack([val_set.sample(i)[0] for i in range(first, min(first + 64, len(val_set)))])
            if kind == "centernet":
                found += decode(model(images), size, 4, 0.3)
            else:
                for out in model(list(images)):
                    top = float(out["scores"].max()) if len(out["scores"]) else 0.0
                    found.append(ImageBoxes(out["boxes"], out["scores"], top))  # max box score as the image score
    detections = to_original(found, [(r.rows, r.columns) for r in val_rows], size)
    choice = choose_box_thresholds(detections, [r.boxes for r in val_rows], THRESHOLDS)
    return {"cpu_seconds_training": cpu, "steps": steps, "cpu_seconds_per_step": cpu / steps,
            "val_rsna_score": choice.rsna_score, "image_threshold": choice.image_threshold,
            "box_threshold": choice.box_threshold,
            **{f"val_{k}": v for k, v in average_precision(detections, [r.boxes for r in val_rows]).items()}}


def step_seconds(kind: str, train_set, batch: int, steps: int) -> float:
    """Median process CPU seconds of one training step (forward, loss, backward, AdamW) on the same batch."""
    torch.manual_seed(0)
    model = {"classifier": lambda: build_network("resnet18"), "centernet": lambda: build_detector("resnet18", 64),
             "fcos_slim": lambda: fcos_slim(train_set.image_size)}[kind]()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters())
    items = [train_set[i] for i in range(batch)]
    parts = [torch.stack([item[k] for item in items]) for k in range(5)]
    boxes = [train_set.sample(i)[1] for i in range(batch)]
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.process_time()
        if kind == "classifier":
            loss = nn.functional.binary_cross_entropy_with_logits(model(parts[0])[:, 0], parts[4])
        elif kind == "centernet":
            loss = detection_loss(model(parts[0]), *parts[1:])["loss"]
        else:
            loss = sum(model(list(parts[0]), targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - start)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["centernet", "fcos_slim"])
    parser.add_argument("--steps-only", type=int, metavar="N", help="only time N training steps of each (and the classifier)")
    args = parser.parse_args()
    stats = json.loads(Path("reports/dataset.json").read_text())
    manifest = read_manifest(args.processed)
    sets = {s: DetectionDataset(args.processed / f"{s}.npy", split_rows(manifest, s), args.image_size, stats["mean"],
                                stats["std"], augment=s == "train") for s in ("train", "val")}
    results = {"command": " ".join(["python", "benchmarks/detectors.py", *sys.argv[1:]]),
               "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}",
               "chosen_on": "val (the epochs' count is fixed; the thresholds are chosen on val and scored there: "
                            "a comparison of the two heads, not a held-out estimate)",
               "epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size,
               "torch_threads": torch.get_num_threads()}
    if args.steps_only:
        base = step_seconds("classifier", sets["train"], args.batch_size, args.steps_only)
        results["classifier_cpu_seconds_per_step"] = base
        for kind in args.models:
            seconds = step_seconds(kind, sets["train"], args.batch_size, args.steps_only)
            results[kind] = {"cpu_seconds_per_step": seconds, "step_vs_classifier": seconds / base}
            print(kind, json.dumps(results[kind]), flush=True)
        Path("benchmarks/detector_steps.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    results["classifier_cpu_seconds_per_step"] = step_seconds("classifier", sets["train"], args.batch_size, 3)
    for kind in args.models:
        results[kind] = train_and_score(kind, sets["train"], sets["val"], sets["val"].rows, args.epochs, 1e-3,
                                        args.batch_size, seed=0)
        results[kind]["step_vs_classifier"] = (results[kind]["cpu_seconds_per_step"]
                                               / results["classifier_cpu_seconds_per_step"])
        print(kind, json.dumps(results[kind]), flush=True)
    Path("benchmarks/detectors.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
