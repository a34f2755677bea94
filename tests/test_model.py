import torch

from pneumonia.core.architectures import build_network
from pneumonia.classification.model import PneumoniaClassifier


def test_network_takes_one_channel_and_returns_one_logit():
    net = build_network()
    assert net.conv1.in_channels == 1
    out = net(torch.zeros(3, 1, 64, 64))
    assert out.shape == (3, 1)


def test_classifier_forward_and_hyperparameters():
    model = PneumoniaClassifier(image_size=64, mean=0.4, std=0.2, lr=3e-4, pos_weight=2.0)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2,)
    assert model.hparams.image_size == 64 and model.hparams.arch == "resnet18"
    assert model.loss.pos_weight.item() == 2.0
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)
