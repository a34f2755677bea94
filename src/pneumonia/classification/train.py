"""The train stage: the classifier (``train.arch``, ResNet18 by default) on the processed arrays with Lightning.

Reads ``<processed>/{train,val}.npy`` and the manifest, normalises with the
mean/std of ``reports/dataset.json``, logs curves with DVCLive, keeps the
checkpoint with the best ``val/auroc`` and exports it as the portable model file
``models/classifier.safetensors`` (weights and the hyper-parameters prediction
needs; see :mod:`pneumonia.core.model_file`). Lightning's own checkpoints, with the
optimizer state, live only in ``models/.classifier-checkpoints/`` while training.

Resuming: every epoch ends with ``resume.ckpt`` in ``models/.model-checkpoints/``
beside a fingerprint of the run's params and data. A run that was killed is
resumed from it by the next ``dvc repro`` (only when the fingerprint matches),
and ends with the same weights and metrics as an uninterrupted run: the sample
order and the augmentation are seeded per epoch, not drawn from one stream.
The folder is removed when training finishes.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from pneumonia.evaluation.calibration import fit_temperature
from pneumonia.classification.classifier import NETWORK_PREFIX, classifier_header, load_classifier
from pneumonia.classification.data import XrayDataset, make_loader
from pneumonia.core.errors import DatasetError
from pneumonia.classification.inference import predict_logits
from pneumonia.reporting.grid import save_grid
from pneumonia.data.manifest import CLASS_NAMES, read_manifest, split_labels
from pneumonia.classification.model import PneumoniaClassifier
from pneumonia.core.model_file import save_model
from pneumonia.core.params import TrainParams
from pneumonia.core.scaling import (SeedEachEpoch, augment_on_device, fingerprint, fit, loader_workers, make_trainer,
                                    prepare_checkpoints, resume_checkpoint)

MONITOR = "val/auroc"


def run(
    processed_dir: Path,
    stats_json: Path,
    params: TrainParams,
    seed: int,
    model_path: Path = Path("models/classifier.safetensors"),
    live_dir: Path = Path("dvclive"),
    grid_path: Path | None = None,
    windowing: str = "auto",
) -> dict[str, float]:
    """Train, write the best epoch's model file to ``model_path``, return the final logged metrics.

    ``windowing`` is how the arrays were rendered (``dicom_to_npy.windowing``); the
    model file records it so ``predict`` renders new DICOMs the same way.
    """
    pl.seed_everything(seed, workers=True)
    stats = json.loads(Path(stats_json).read_text())
    on_device = params.augment and augment_on_device(params)
    data = XrayDataModule(Path(processed_dir), stats, params, seed, on_device)
    model = _model(params, data, stats, windowing, on_device)
    if grid_path is not None and rank_zero_only.rank == 0:
        _save_augmented(grid_path, data.train_set, params.grid_images, seed, model.batch_augment)

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed folder name: Lightning records the checkpoint's path inside it, and a random
    # temporary name would make two identical runs write different bytes (and DVC hashes).
    ckpt_dir = model_path.parent / f".{model_path.stem}-checkpoints"
    resume, global_step = prepare_checkpoints(ckpt_dir, fingerprint(params, seed, stats, processed_dir), "train",
                                              params.max_epochs)
    if resume is not None and rank_zero_only.rank == 0:
        _trim_live(live_dir, global_step)
    best = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=MONITOR, mode="max", save_top_k=1)
    trainer = make_trainer(
        params, ckpt_dir, [best, resume_checkpoint(ckpt_dir), SeedEachEpoch(seed), *_optional_callbacks(params)],
        # None is Lightning's "every batch" without its info line about 1.0
        limit_train_batches=None if params.limit_train_batches == 1.0 else params.limit_train_batches,
        logger=DVCLiveLogger(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, resume=resume is not None),
        log_every_n_steps=1,
    )
    fit(trainer, model, datamodule=data, ckpt_path=resume)
    if trainer.is_global_zero:
        _export(Path(best.best_model_path), model_path, processed_dir, data.val_labels, params)
        # Finished: nothing to resume. (A failed or killed run keeps the folder for the next try.)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()} | {"best_" + MONITOR: float(best.best_model_score)}


class XrayDataModule(pl.LightningDataModule):
    """The train and val splits' datasets and loaders (train augmented on the CPU unless the batch path runs)."""

    def __init__(self, processed_dir: Path, stats: dict, params: TrainParams, seed: int, on_device: bool):
        super().__init__()
        manifest = read_manifest(processed_dir)
        self.train_labels, self.val_labels = split_labels(manifest, "train"), split_labels(manifest, "val")
        for name, labels in (("train", self.train_labels), ("val", self.val_labels)):
            if len(np.unique(labels)) < 2:
                raise DatasetError(f"the {name} split has a single class; both are needed to train and to compute "
                                   "AUROC")
        self.train_set = XrayDataset(processed_dir / "train.npy", self.train_labels, stats["mean"], stats["std"],
                                     augment=params.augment and not on_device)
        self.val_set = XrayDataset(processed_dir / "val.npy", self.val_labels, stats["mean"], stats["std"])
        self.params, self.seed, self.on_device = params, seed, on_device

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.params.batch_size, loader_workers(self.params, self.on_device),
                           shuffle=True, oversample=self.params.class_balance == "oversample", seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.params.batch_size, loader_workers(self.params, self.on_device),
                           shuffle=False)


def _model(params: TrainParams, data: XrayDataModule, stats: dict, windowing: str, on_device: bool
           ) -> PneumoniaClassifier:
    pos_weight = params.pos_weight
    if params.class_balance == "weighted_loss":
        pos_weight *= float((data.train_labels == 0).sum() / (data.train_labels == 1).sum())
    return PneumoniaClassifier(
        image_size=data.train_set.image_size, mean=stats["mean"], std=stats["std"], lr=params.lr,
        pos_weight=pos_weight, arch=params.arch, windowing=windowing, init=params.init, optimizer=params.optimizer,
        weight_decay=params.weight_decay, lr_schedule=params.lr_schedule, warmup_epochs=params.warmup_epochs,
        augment_on_device=on_device,
    )


def _optional_callbacks(params: TrainParams) -> list[pl.Callback]:
    """Early stopping when asked, and the learning rate's curve (dvclive/plots/metrics/train/lr.tsv) when it moves."""
    extra: list[pl.Callback] = [EarlyStopping(MONITOR, mode="max", patience=params.early_stopping_patience)] * bool(
        params.early_stopping_patience
    )
    if params.lr_schedule != "constant" or params.warmup_epochs:
        extra.append(LearningRateMonitor(logging_interval="step"))
    return extra


def _trim_live(live_dir: Path, global_step: int) -> None:
    """Drop DVCLive rows logged after the checkpoint (the killed epoch): the resumed run logs them again."""
    for path in Path(live_dir).rglob("*.tsv"):
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        step = rows[0].index("step") if rows else -1
        kept = rows[:1] + [r for r in rows[1:] if step >= 0 and int(r[step]) <= global_step]
        with open(path, "w", newline="") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(kept)


def _export(
    best_ckpt: Path, model_path: Path, processed_dir: Path, val_labels: np.ndarray, params: TrainParams
) -> None:
    """The best epoch's network and hyper-parameters into the model file (temperature fitted on val if asked)."""
    checkpoint = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    header = classifier_header(checkpoint["hyper_parameters"])
    state = {k.removeprefix(NETWORK_PREFIX): v for k, v in checkpoint["state_dict"].items()
             if k.startswith(NETWORK_PREFIX)}
    if params.temperature_scaling:
        draft = best_ckpt.with_name("untempered.safetensors")
        save_model(draft, "classifier", state, header)
        logits = predict_logits(load_classifier(draft), np.load(processed_dir / "val.npy", mmap_mode="r"),
                                params.batch_size)
        header["temperature"] = fit_temperature(val_labels, logits)
    save_model(model_path, "classifier", state, header)


def _save_augmented(path: Path, dataset: XrayDataset, n: int, seed: int, batch_augment=None) -> None:
    """What the network sees in training: augmented, standardized train images (by the batch path if it runs)."""
    indices = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    # A forked RNG: the grid's draws must not shift the training run's random stream.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = [dataset[int(i)] for i in indices]
        if batch_augment is not None:
            images = batch_augment(torch.stack([image for image, _ in samples]))
            samples = [(image, label) for image, (_, label) in zip(images, samples)]
    save_grid(
        path,
        images=[image[0].numpy() for image, _ in samples],
        captions=[f"{int(label)} {CLASS_NAMES[int(label)]}" for _, label in samples],  # as samples.png: "1 ..."
    )
