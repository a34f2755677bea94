"""What the two training stages (train, detect) share to scale out and to survive being killed.

Scaling: DataLoader workers (``num_workers: auto``) and where the augmentation runs
(``augment_on``); the Lightning ``devices``/``num_nodes``/``strategy`` params go to the Trainer as they are.

Resuming: every epoch ends with ``resume.ckpt`` in the stage's hidden checkpoint folder beside
``fingerprint.json`` (the params, seed, statistics and manifest it was trained with). The next run
resumes from it only when the fingerprint matches; the stage removes the folder when it finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pneumonia.classification.data import epoch_seed
from pneumonia.data.manifest import MANIFEST

RESUME = "resume.ckpt"
FINGERPRINT = "fingerprint.json"


def augment_on_device(params) -> bool:
    """Whether the augmentation runs on whole batches on the device (``augment_on``; auto: on a GPU)."""
    if params.augment_on != "auto":
        return params.augment_on == "device"
    return params.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def loader_workers(params, on_device: bool) -> int:
    """``num_workers``; auto: half the cores, at most 8, when the device augments (the loader only reads), else 0."""
    if params.num_workers != "auto":
        return params.num_workers
    return min(8, (os.cpu_count() or 2) // 2) if on_device else 0


class SeedEachEpoch(pl.Callback):
    """Reseed the global RNGs (augmentation) at the start of every epoch from (seed, epoch)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        value = epoch_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)


def fingerprint(params, seed: int, stats: dict, processed_dir: Path) -> dict:
    """What a checkpoint must have been trained with to be resumed: params (a stage's section), seed and data."""
    manifest = hashlib.sha256((Path(processed_dir) / MANIFEST).read_bytes()).hexdigest()
    return {"params": params.model_dump(), "seed": seed, "stats": stats, "manifest_sha256": manifest}


def resumable(ckpt_dir: Path, stamp: dict) -> tuple[str | None, tuple[int, int] | None]:
    """``resume.ckpt`` of an unfinished run with the same fingerprint, if one loads, and its (epoch, global step)."""
    path, stamp_path = ckpt_dir / RESUME, ckpt_dir / FINGERPRINT
    if not (path.exists() and stamp_path.exists()):
        return None, None
    try:
        if json.loads(stamp_path.read_text()) != json.loads(json.dumps(stamp)):
            return None, None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # fails if killed while writing it
        return str(path), (int(checkpoint["epoch"]), int(checkpoint["global_step"]))
    except Exception:
        return None, None


def prepare_checkpoints(ckpt_dir: Path, stamp: dict, stage: str, max_epochs: int) -> tuple[str | None, int | None]:
    """The checkpoint to resume from (and its global step), or None after emptying ``ckpt_dir`` for a fresh run.

    Only rank 0 touches the folder; every rank gets the same answer (the others start after rank 0 wrote it).
    """
    resume, progress = resumable(ckpt_dir, stamp)
    if rank_zero_only.rank == 0:
        if resume is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            ckpt_dir.mkdir(parents=True)
            (ckpt_dir / FINGERPRINT).write_text(json.dumps(stamp) + "\n")
        else:
            print(f"{stage}: resuming from {resume} (epochs done: {progress[0] + 1} of {max_epochs})", flush=True)
    return resume, None if progress is None else progress[1]


def resume_checkpoint(ckpt_dir: Path) -> ModelCheckpoint:
    """Saves ``resume.ckpt`` after validation, at the very end of each epoch: what a resumed run starts from."""
    return ModelCheckpoint(dirpath=str(ckpt_dir), filename=RESUME.removesuffix(".ckpt"), save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)


def make_trainer(params, ckpt_dir: Path, callbacks: list, **options) -> pl.Trainer:
    """The Trainer of both training stages: ``params``' scale-out settings, deterministic, no sanity check, its
    root in ``ckpt_dir``; ``callbacks`` in order (with :func:`resume_checkpoint`); ``options`` the stage's own."""
    return pl.Trainer(
        max_epochs=params.max_epochs,
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy=params.strategy,
        precision=params.precision,
        deterministic=True,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        default_root_dir=str(ckpt_dir),
        **options,
    )


def fit(trainer: pl.Trainer, module: pl.LightningModule, *loaders, **kwargs) -> None:
    """``trainer.fit`` without Lightning's warning about the checkpoint folder, which holds the resume
    fingerprint (and, resuming, the checkpoints) by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, *loaders, **kwargs)


def rng_states() -> dict:
    """The global RNGs' states (torch CPU, NumPy, Python), in types a ``weights_only`` checkpoint load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      cached), "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
