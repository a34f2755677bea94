"""The classifier: a torchvision network (ResNet18 by default) with a 1-channel stem and a single logit."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision

from pneumonia.architectures import build_network


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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.network = build_network(arch)
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_auroc = BinaryAUROC()
        self.val_ap = BinaryAveragePrecision()

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
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
