"""The train stage: ResNet18 on the processed arrays with PyTorch Lightning.

Reads ``<processed>/{train,val}.npy`` and the manifest, normalises with the
mean/std of ``metrics/dataset.json``, logs curves with DVCLive, keeps the
checkpoint with the best ``val/auroc`` and writes it to ``models/model.ckpt``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pneumonia.atomic import atomic_path
from pneumonia.calibration import fit_temperature
from pneumonia.checkpoint import load_classifier
from pneumonia.data import XrayDataset, make_loader
from pneumonia.errors import DatasetError
from pneumonia.inference import predict_logits
from pneumonia.grid import save_grid
from pneumonia.manifest import read_manifest, split_labels
from pneumonia.model import PneumoniaClassifier
from pneumonia.params import TrainParams

MONITOR = "val/auroc"


def run(
    processed_dir: Path,
    stats_json: Path,
    params: TrainParams,
    seed: int,
    model_path: Path = Path("models/model.ckpt"),
    live_dir: Path = Path("dvclive"),
    grid_path: Path | None = None,
) -> dict[str, float]:
    """Train, write the best checkpoint to ``model_path``, return the final logged metrics."""
    pl.seed_everything(seed, workers=True)
    stats = json.loads(Path(stats_json).read_text())
    manifest = read_manifest(processed_dir)
    train_labels, val_labels = split_labels(manifest, "train"), split_labels(manifest, "val")
    for name, labels in (("train", train_labels), ("val", val_labels)):
        if len(np.unique(labels)) < 2:
            raise DatasetError(f"the {name} split has a single class; both are needed to train and to compute AUROC")

    train_set = XrayDataset(processed_dir / "train.npy", train_labels, stats["mean"], stats["std"], augment=params.augment)
    val_set = XrayDataset(processed_dir / "val.npy", val_labels, stats["mean"], stats["std"])
    pos_weight = params.pos_weight
    if params.class_balance == "weighted_loss":
        pos_weight *= float((train_labels == 0).sum() / (train_labels == 1).sum())

    if grid_path is not None and rank_zero_only.rank == 0:
        _save_augmented(grid_path, train_set, params.grid_images, seed)

    model = PneumoniaClassifier(
        image_size=train_set.image_size, mean=stats["mean"], std=stats["std"], lr=params.lr, pos_weight=pos_weight
    )
    train_loader = make_loader(
        train_set, params.batch_size, params.num_workers, shuffle=True,
        oversample=params.class_balance == "oversample", seed=seed,
    )
    val_loader = make_loader(val_set, params.batch_size, params.num_workers, shuffle=False)

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed folder name: Lightning records the checkpoint's path inside it, and a random
    # temporary name would make two identical runs write different bytes (and DVC hashes).
    ckpt_dir = model_path.parent / f".{model_path.stem}-checkpoints"
    if rank_zero_only.rank == 0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    try:
        best = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=MONITOR, mode="max", save_top_k=1)
        trainer = pl.Trainer(
            max_epochs=params.max_epochs,
            accelerator=params.accelerator,
            devices=params.devices,
            num_nodes=params.num_nodes,
            strategy=params.strategy,
            precision=params.precision,
            deterministic=True,
            logger=DVCLiveLogger(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False),
            callbacks=[best],
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            default_root_dir=str(ckpt_dir),
        )
        trainer.fit(model, train_loader, val_loader)
        if trainer.is_global_zero:
            with atomic_path(model_path) as tmp:
                shutil.copyfile(best.best_model_path, tmp)
                if params.temperature_scaling:
                    _fit_temperature(tmp, processed_dir, val_labels, params.batch_size)
    finally:
        # Under DDP only rank 0 writes the checkpoint and DVCLive's files, and only it tidies up.
        if rank_zero_only.rank == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()} | {"best_" + MONITOR: float(best.best_model_score)}


def _fit_temperature(checkpoint_path: Path, processed_dir: Path, val_labels: np.ndarray, batch_size: int) -> None:
    """Fit the logit temperature of the selected checkpoint on val and store it in the checkpoint."""
    model = load_classifier(checkpoint_path)
    logits = predict_logits(model, np.load(processed_dir / "val.npy", mmap_mode="r"), batch_size)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["temperature"] = fit_temperature(val_labels, logits)
    torch.save(checkpoint, checkpoint_path)


def _save_augmented(path: Path, dataset: XrayDataset, n: int, seed: int) -> None:
    """What the network sees in training: augmented, standardized train images."""
    indices = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    # A forked RNG: the grid's draws must not shift the training run's random stream.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = [dataset[int(i)] for i in indices]
    save_grid(
        path,
        images=[image[0].numpy() for image, _ in samples],
        captions=[f"label {int(label)}" for _, label in samples],
    )
