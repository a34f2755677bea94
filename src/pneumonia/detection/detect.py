"""The detect stage: train the detector on the train split's boxes, choose the epoch and thresholds on val.

Each epoch ends with the val images decoded and the (image, box) threshold pair chosen by
:class:`pneumonia.detection.thresholds.ThresholdRule`: the gate at the image-probability operating point
reaching ``evaluate.target_sensitivity``, the box threshold of best RSNA score with val reweighted to
``detect.threshold_prevalence``; the epoch with the best such score is kept, and its weights and
thresholds go into the model file (``models/detector.safetensors``).

The augmentation runs per sample in the loader (``augment_on: loader``, ``auto`` on a CPU) or on whole
batches on the device (``device``, ``auto`` on a GPU: :mod:`pneumonia.detection.batch_augment`), the
targets encoded after it in both cases.
Lightning's checkpoints exist only in a hidden folder beside it while training.

Scaling and resuming as the train stage (:mod:`pneumonia.core.scaling`): DDP over ``devices`` x ``num_nodes``
with the val images decoded in parts and gathered, so that every rank chooses the thresholds on the
whole val split; a killed run resumes from its last finished epoch when params, seed and data match.
A resumed run ends with the same model file and ``epochs.json`` as an uninterrupted one: the epoch
history and the global RNG states (the augmentation's) travel in the checkpoint, and the sample order
depends only on (seed, epoch).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from pneumonia.core.atomic import write_json
from pneumonia.detection import tta
from pneumonia.detection.batch_augment import augment_batch, batch_box_augmentation
from pneumonia.detection.data import BalancedEpochSampler, DetectionDataset, collate_boxes
from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.detector import LoadedDetector, save_detector, to_original
from pneumonia.detection.network import build_detector
from pneumonia.detection.targets import detection_loss, encode_targets
from pneumonia.detection.thresholds import ThresholdRule, target_prevalence
from pneumonia.core.errors import DatasetError
from pneumonia.data.manifest import ManifestRow, read_manifest, split_rows
from pneumonia.core.params import DetectParams
from pneumonia.core.scaling import (augment_on_device, fingerprint, fit, loader_workers, make_trainer,
                                    prepare_checkpoints, resume_checkpoint, rng_states, set_rng_states)

MONITOR = "val/rsna_score"


class DetectorModule(pl.LightningModule):
    """The network, its loss, and per-epoch threshold choice on val (``history``: one dict per epoch)."""

    def __init__(self, params: DetectParams, val_rows: list[ManifestRow], rule: ThresholdRule,
                 augment_on_device: bool = False):
        super().__init__()
        self.params, self.val_rows, self.rule = params, val_rows, rule
        self.network = build_detector(params.arch, params.width, params.neck, params.init)
        # A plain attribute, not a submodule: it has no weights and must not enter checkpoints.
        self.__dict__["batch_augment"] = batch_box_augmentation(params.image_size) if augment_on_device else None
        self.history: list[dict] = []
        self._found: list[tuple[int, ImageBoxes]] = []  # (val index, decoded boxes) of this rank's images
        self._train_loss: list[float] = []

    def on_fit_start(self):
        if self.device.type == "cuda":  # tensor cores want NHWC
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Train batches augmented and encoded on the device when it augments; images in channels_last on a GPU."""
        if self.batch_augment is not None and self.trainer.training:
            images, boxes, counts, labels = batch
            images, moved = augment_batch(self.batch_augment, images, boxes, counts)
            # The targets of a few boxes on a 1/8 grid: the loader path's encoder, on the CPU, one home.
            targets = [encode_targets(b.detach().cpu().numpy(), self.params.image_size) for b in moved]
            batch = [images, *(torch.stack(t).to(images.device) for t in zip(*targets)), labels]
        if self.device.type == "cuda":
            batch = [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
        return batch

    def training_step(self, batch, batch_idx):
        images, heatmap, box_target, box_weight, labels = batch
        losses = detection_loss(self.network(images), heatmap, box_target, box_weight, labels)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self._train_loss.append(float(losses["loss"].detach()))
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        images, indices = batch
        found = decode(self.network(images), self.params.image_size, self.params.max_boxes, self.params.nms_iou)
        self._found.extend(zip(indices.tolist(), found, strict=True))

    def on_validation_epoch_end(self):
        rows = self.val_rows
        found, train_loss = _gather(self._found), _gather(self._train_loss)
        # by val index; DistributedSampler's padding repeats a few images, which collapse here
        by_index = dict(found)
        detections = to_original([by_index[i] for i in range(len(rows))], [(r.rows, r.columns) for r in rows],
                                 self.params.image_size)
        self._found = []
        choice = self.rule.choose(detections, [r.boxes for r in rows])
        self.log(MONITOR, choice.rsna_score, sync_dist=True)  # the same on every rank: the mean is that value
        self.history.append({
            "epoch": self.current_epoch,
            "train_loss": float(np.mean(train_loss)) if train_loss else None,
            "val_rsna_score": choice.rsna_score,
            "image_threshold": choice.image_threshold,
            "box_threshold": choice.box_threshold,
        })
        self._train_loss = []
        if self.trainer.is_global_zero:
            print(f"detect: epoch {self.current_epoch}: val RSNA score {choice.rsna_score:.3f} "
                  f"(image >= {choice.image_threshold}, box >= {choice.box_threshold})", flush=True)

    def on_save_checkpoint(self, checkpoint):
        """The epochs so far and the RNG states: a run resumed from this checkpoint continues as if never stopped."""
        checkpoint["history"] = list(self.history)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint["history"])
        set_rng_states(checkpoint["rng_states"])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.params.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class IndexedImages(Dataset):
    """``(image, index)`` of a :class:`DetectionDataset`: val's decoded images are put back in order across ranks."""

    def __init__(self, dataset: DetectionDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.sample(index)[0], index


def _gather(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order (``items`` itself in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(items)
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def run(
    processed_dir: Path,
    stats_json: Path,
    params: DetectParams,
    seed: int,
    gate_sensitivity: float | None = None,
    model_path: Path = Path("models/detector.safetensors"),
    history_json: Path | None = Path("plots/detection/epochs.json"),
) -> dict:
    """Train, keep the epoch of best val RSNA score, write the model file; return that epoch's history entry.

    ``gate_sensitivity``: the image gate's operating point (``evaluate.target_sensitivity``); None: the gate
    is chosen by the score among ``detect.score_thresholds`` as the box threshold is.
    """
    on_device = params.augment and augment_on_device(params)
    pl.seed_everything(seed, workers=True)
    processed_dir = Path(processed_dir)
    stats = json.loads(Path(stats_json).read_text())
    train_rows, val_rows, sets = _datasets(processed_dir, params, stats, on_device)
    rule = ThresholdRule(params.score_thresholds, target_prevalence(params.threshold_prevalence, train_rows),
                         gate_sensitivity)
    module = DetectorModule(params, val_rows, rule, on_device)
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = model_path.parent / f".{model_path.stem}-checkpoints"
    # the rule too: the epochs' history, which a resumed run keeps, was chosen under it
    stamp = fingerprint(params, seed, stats, processed_dir) | {"threshold_rule": asdict(rule)}
    resume, _ = prepare_checkpoints(ckpt_dir, stamp, "detect", params.max_epochs)
    best = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=MONITOR, mode="max",
                                        save_top_k=1)
    trainer = make_trainer(params, ckpt_dir, [best, resume_checkpoint(ckpt_dir)], logger=False,
                           enable_progress_bar=False)
    # Lightning's deterministic mode also fills every new tensor with NaN (12 % of a CPU step here): results do
    # not depend on it, since no op of this network reads memory before writing it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    workers = loader_workers(params, on_device)
    loader = lambda dataset, sampler, collate=None: DataLoader(  # noqa: E731
        dataset, batch_size=params.batch_size, sampler=sampler, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed), collate_fn=collate,
    )
    # Under DDP Lightning wraps the sampler in a DistributedSamplerWrapper: every rank draws the same
    # (seed, epoch) order, shuffled again by PL_GLOBAL_SEED and epoch, and takes its share of it.
    sampler = BalancedEpochSampler([r.label for r in train_rows], params.negative_ratio, seed)
    fit(trainer, module, loader(sets["train"], sampler, collate_boxes if on_device else None),
        loader(IndexedImages(sets["val"]), None), ckpt_path=resume)
    chosen = max(module.history, key=lambda h: (h["val_rsna_score"], -h["epoch"]))
    if not trainer.is_global_zero:
        return chosen
    detector = _best_detector(Path(best.best_model_path), params, stats, chosen)
    network = detector.network  # what is saved, whatever the flip's choice wraps around it
    if params.tta == "hflip":  # the kept epoch's val boxes with and without the mirror's: the merge chosen on val
        detector, chosen = tta.choose_on_val(detector, loader(sets["val"], None), val_rows, rule,
                                             params.tta_merge_ious, chosen, trainer.strategy.root_device)
    save_detector(model_path, network, detector, epoch=chosen["epoch"], val_rsna_score=chosen["val_rsna_score"])
    if history_json is not None:
        write_json(history_json, module.history)
    # Finished: nothing to resume. (A failed or killed run keeps the folder for the next try.)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return chosen


def _datasets(processed_dir: Path, params: DetectParams, stats: dict, on_device: bool
              ) -> tuple[list[ManifestRow], list[ManifestRow], dict[str, DetectionDataset]]:
    """The train and val rows (each split needs boxes) and their datasets (train augmented on the CPU unless the
    batch path runs; its targets encoded after the transfer then)."""
    manifest = read_manifest(processed_dir)
    train_rows, val_rows = split_rows(manifest, "train"), split_rows(manifest, "val")
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if not any(r.boxes for r in rows):
            raise DatasetError(f"{processed_dir / 'manifest.csv'}: the {name} split has no boxes; "
                               "a detector needs positives with boxes in train and val (check the split params)")
    sets = {
        name: DetectionDataset(processed_dir / f"{name}.npy", rows, params.image_size, stats["mean"], stats["std"],
                               augment=params.augment and name == "train" and not on_device,
                               encode=not (on_device and name == "train"))
        for name, rows in (("train", train_rows), ("val", val_rows))
    }
    return train_rows, val_rows, sets


def _best_detector(best_ckpt: Path, params: DetectParams, stats: dict, chosen: dict) -> LoadedDetector:
    """The kept epoch's network from Lightning's checkpoint, with the thresholds chosen with it."""
    state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    network = build_detector(params.arch, params.width, params.neck)
    network.load_state_dict({k.removeprefix("network."): v for k, v in state.items()})
    return LoadedDetector(
        network=network, arch=params.arch, neck=params.neck, width=params.width, image_size=params.image_size,
        mean=stats["mean"], std=stats["std"], image_threshold=chosen["image_threshold"],
        box_threshold=chosen["box_threshold"], nms_iou=params.nms_iou, max_boxes=params.max_boxes,
    )
