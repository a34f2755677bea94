"""The detect stage: train the detector on the train split's boxes, choose the epoch and thresholds on val.

Each epoch ends with the val images decoded and the (image, box) threshold pair of best RSNA score
(:func:`pneumonia.detection.thresholds.choose_thresholds`); the epoch with the best such score is
kept, and its weights and thresholds go into the model file (``models/detector.safetensors``).
Lightning's checkpoints exist only in a hidden folder beside it while training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pneumonia.atomic import write_json
from pneumonia.detection import tta
from pneumonia.detection.data import BalancedEpochSampler, DetectionDataset
from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.detector import LoadedDetector, save_detector, to_original
from pneumonia.detection.network import build_detector
from pneumonia.detection.targets import detection_loss
from pneumonia.detection.thresholds import choose_thresholds, target_prevalence
from pneumonia.errors import DatasetError
from pneumonia.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.params import DetectParams

MONITOR = "val/rsna_score"


class DetectorModule(pl.LightningModule):
    """The network, its loss, and per-epoch threshold choice on val (``history``: one dict per epoch)."""

    def __init__(self, params: DetectParams, val_rows: list[ManifestRow], train_rows: list[ManifestRow]):
        super().__init__()
        self.params, self.val_rows = params, val_rows
        self.network = build_detector(params.arch, params.width, params.neck, params.init)
        # the prevalence the thresholds are tuned for (val reweighted to it; None: val's own)
        self.prevalence = target_prevalence(params.threshold_prevalence, train_rows)
        self.history: list[dict] = []
        self._found: list[ImageBoxes] = []
        self._train_loss: list[float] = []

    def training_step(self, batch, batch_idx):
        images, heatmap, box_target, box_weight, labels = batch
        losses = detection_loss(self.network(images), heatmap, box_target, box_weight, labels)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(labels))
        self._train_loss.append(float(losses["loss"].detach()))
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        raw = self.network(batch[0])
        self._found.extend(decode(raw, self.params.image_size, self.params.max_boxes, self.params.nms_iou))

    def on_validation_epoch_end(self):
        rows = self.val_rows
        detections = to_original(self._found, [(r.rows, r.columns) for r in rows], self.params.image_size)
        self._found = []
        choice = choose_thresholds(detections, [r.boxes for r in rows], self.params.score_thresholds,
                                   prevalence=self.prevalence)
        self.log(MONITOR, choice.rsna_score)
        self.history.append({
            "epoch": self.current_epoch,
            "train_loss": float(np.mean(self._train_loss)) if self._train_loss else None,
            "val_rsna_score": choice.rsna_score,
            "image_threshold": choice.image_threshold,
            "box_threshold": choice.box_threshold,
        })
        self._train_loss = []
        print(f"detect: epoch {self.current_epoch}: val RSNA score {choice.rsna_score:.3f} "
              f"(image >= {choice.image_threshold}, box >= {choice.box_threshold})", flush=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.params.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def run(
    processed_dir: Path,
    stats_json: Path,
    params: DetectParams,
    seed: int,
    model_path: Path = Path("models/detector.safetensors"),
    history_json: Path | None = Path("plots/detection/epochs.json"),
) -> dict:
    """Train, keep the epoch of best val RSNA score, write the model file; return that epoch's history entry."""
    pl.seed_everything(seed, workers=True)
    processed_dir = Path(processed_dir)
    stats = json.loads(Path(stats_json).read_text())
    manifest = read_manifest(processed_dir)
    train_rows, val_rows = split_rows(manifest, "train"), split_rows(manifest, "val")
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if not any(r.boxes for r in rows):
            raise DatasetError(f"{processed_dir / 'manifest.csv'}: the {name} split has no boxes; "
                               "a detector needs positives with boxes in train and val (check the split params)")
    sets = {
        name: DetectionDataset(processed_dir / f"{name}.npy", rows, params.image_size, stats["mean"], stats["std"],
                               augment=params.augment and name == "train")
        for name, rows in (("train", train_rows), ("val", val_rows))
    }
    module = DetectorModule(params, val_rows, train_rows)
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = model_path.parent / f".{model_path.stem}-checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    best = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=MONITOR, mode="max",
                                        save_top_k=1)
    trainer = pl.Trainer(
        max_epochs=params.max_epochs,
        accelerator=params.accelerator,
        devices=1,
        precision=params.precision,
        deterministic=True,
        logger=False,
        callbacks=[best],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(ckpt_dir),
    )
    # Lightning's deterministic mode also fills every new tensor with NaN (12 % of a CPU step here): results do
    # not depend on it, since no op of this network reads memory before writing it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    loader = lambda dataset, sampler: DataLoader(  # noqa: E731
        dataset, batch_size=params.batch_size, sampler=sampler, num_workers=params.num_workers,
        persistent_workers=params.num_workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    sampler = BalancedEpochSampler([r.label for r in train_rows], params.negative_ratio, seed)
    trainer.fit(module, loader(sets["train"], sampler), loader(sets["val"], None))
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    network = build_detector(params.arch, params.width, params.neck)
    network.load_state_dict({k.removeprefix("network."): v for k, v in state.items()})
    chosen = max(module.history, key=lambda h: (h["val_rsna_score"], -h["epoch"]))
    detector = LoadedDetector(
        network=network, arch=params.arch, neck=params.neck, width=params.width, image_size=params.image_size,
        mean=stats["mean"], std=stats["std"], image_threshold=chosen["image_threshold"],
        box_threshold=chosen["box_threshold"], nms_iou=params.nms_iou, max_boxes=params.max_boxes,
    )
    if params.tta == "hflip":  # the kept epoch's val boxes with and without the mirror's: the merge chosen on val
        detector, chosen = tta.choose_on_val(detector, loader(sets["val"], None), val_rows, params.score_thresholds,
                                             params.tta_merge_ious, module.prevalence, chosen,
                                             trainer.strategy.root_device)
    save_detector(model_path, network, detector, epoch=chosen["epoch"], val_rsna_score=chosen["val_rsna_score"])
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if history_json is not None:
        write_json(history_json, module.history)
    return chosen
