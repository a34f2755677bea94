"""The classifier: a torchvision network (ResNet18 by default) with a 1-channel stem and a single logit."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision

from pneumonia.core.architectures import build_network
from pneumonia.classification.data import batch_augmentation


class PneumoniaClassifier(pl.LightningModule):
    """Binary pneumonia classifier; its hyperparameters carry everything prediction needs.

    ``image_size`` (pixels), ``mean``/``std`` (of value/255 on the train split),
    ``arch``, ``threshold``, ``temperature`` (probability = sigmoid(logit /
    temperature), fitted on val when enabled) and ``windowing`` (how the DICOMs
    were rendered: ``dicom_to_npy.windowing``) go into the model file.
    """

    def __init__(
        self,
        image_size: int,
        mean: float,
        std: float,
        lr: float = 1e-4,
        pos_weight: float = 1.0,
        arch: str = "resnet18",
        threshold: float = 0.5,
        temperature: float = 1.0,
        windowing: str = "none",
        init: str = "scratch",
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        warmup_epochs: int = 0,
        augment_on_device: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.network = build_network(arch, init)
        # A plain attribute, not a submodule: it has no weights and must not enter checkpoints.
        self.__dict__["batch_augment"] = batch_augmentation(image_size) if augment_on_device else None
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_auroc = BinaryAUROC()
        self.val_ap = BinaryAveragePrecision()

    def on_fit_start(self):
        if self.device.type == "cuda":  # tensor cores want NHWC
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Train batches, now on the model's device, get the augmentation there when it runs on the device."""
        images, labels = batch
        if self.batch_augment is not None and self.trainer.training:
            images = self.batch_augment(images)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N,)."""
        return self.network(images).squeeze(1)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits.unsqueeze(1), labels.unsqueeze(1))
        self.train_acc(logits.sigmoid(), labels.long())
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits.unsqueeze(1), labels.unsqueeze(1))
        probs, target = logits.sigmoid(), labels.long()
        self.val_acc(probs, target)
        self.val_auroc(probs, target)
        self.val_ap(probs, target)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(labels))
        self.log("val/auroc", self.val_auroc, on_epoch=True, batch_size=len(labels))
        self.log("val/average_precision", self.val_ap, on_epoch=True, batch_size=len(labels))

    def configure_optimizers(self):
        """Adam (the reference) or AdamW, and the learning-rate schedule, stepped every batch."""
        h = self.hparams
        if h.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=h.lr)
        if h.lr_schedule == "constant" and h.warmup_epochs == 0:
            return optimizer  # the reference
        total = self.trainer.estimated_stepping_batches
        warmup = int(total * h.warmup_epochs / self.trainer.max_epochs)
        if h.lr_schedule == "onecycle":
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=h.lr, total_steps=total)
        else:
            after = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
                     if h.lr_schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
            schedule = after if warmup == 0 else torch.optim.lr_scheduler.SequentialLR(
                optimizer,
                [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup), after],
                milestones=[warmup],
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}
