"""train.arch, train.init and the schedules: every architecture trains, exports, loads and localizes."""

import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from pneumonia.core import architectures
from pneumonia.classification import train
from pneumonia.core.architectures import ARCHITECTURES, build_network, feature_evidence, head_offset
from pneumonia.classification.classifier import load_classifier
from pneumonia.classification.data import batch_augmentation
from pneumonia.core.errors import ParamsError, PneumoniaError
from pneumonia.localization.cam import localize_images
from pneumonia.core.params import parse_params
from project_params import merged, project_params
from tiny_data import prepare

SIZE = 64  # every architecture's last feature map is then 2 x 2

TRAIN = {"max_epochs": 1, "limit_train_batches": 2, "batch_size": 8, "grid_images": 2, "accelerator": "cpu",
         "temperature_scaling": False}
PARAMS = project_params(
    {
        "split": {"train_size": 0.6, "test_size": 0, "stratify": True},
        "dicom_to_npy": {"image_size": SIZE, "workers": 1, "grid_images": 2},
        "train": TRAIN,
    }
)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("data"), PARAMS, patients=24, size=128, seed=2)


def train_with(root, name, **overrides):
    params = project_params({"train": TRAIN | overrides}).train
    out = root / name
    train.run(root / "processed", root / "dataset.json", params, seed=4, model_path=out / "model.safetensors",
              live_dir=out / "dvclive", grid_path=out / "augmented.png")
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_exports_and_localizes(processed, arch):
    out = train_with(processed, arch, arch=arch, limit_train_batches=1)
    model = load_classifier(out / "model.safetensors")
    assert model.arch == arch and model.image_size == SIZE
    val = np.load(processed / "processed" / "val.npy")
    results = localize_images(model, val[:3], [(256, 256, None)] * 3, threshold=0.0, cam_threshold=0.5,
                              min_area=0.0, batch_size=2)
    assert [r.cam.shape for r in results] == [(2, 2)] * 3
    assert all(r.arch == arch for r in results)
    # The map is the logit's own decomposition: its mean plus the head's constant is the logit.
    images = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        logits, evidence = feature_evidence(model.network, arch, images)
        torch.testing.assert_close(model.network(images)[:, 0], logits)
    torch.testing.assert_close(evidence.mean(dim=(1, 2)) + head_offset(model.network, arch), logits,
                               rtol=1e-4, atol=1e-4)


def test_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ParamsError, match="train.arch is 'vgg16'; choose one of resnet18, resnet34") as info:
        parse_params(merged({"train": {"arch": "vgg16"}}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "efficientnet_b0"])
def test_cam_cells_sit_on_their_receptive_fields_centres(arch):
    # Measured: the centre of mass of d(cell)/d(input) with positive weights (no sign cancellations), BN
    # as identity and random positive inputs (max-pool ties would pick the top-left pixel). ConvNeXt's
    # layer norms make that gradient lopsided at random; its offset (non-overlapping patches) is derived
    # in the registry only.
    torch.manual_seed(0)
    network = build_network(arch).eval()
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.rand_like(p) / p[0].numel() if p.ndim >= 2 else torch.ones_like(p) * name.endswith("weight"))
        for name, b in network.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.fill_(float(name.endswith("running_var")))
    spec = architectures.architecture(arch)
    captured = []
    handle = network.get_submodule(spec.features).register_forward_hook(lambda m, i, output: captured.append(output))
    gradient = 0
    for _ in range(4):
        images = (0.5 + torch.rand(1, 1, 384, 384)).requires_grad_()
        network(images)
        captured.pop()[0, :, 6, 6].sum().backward()
        gradient = gradient + images.grad[0, 0].sum(dim=0)
    handle.remove()
    measured = float((gradient * (torch.arange(384) + 0.5)).sum() / gradient.sum())
    assert measured == pytest.approx(spec.stride * 6 + spec.cell_offset, abs=0.25)


def test_imagenet_init_takes_torchvisions_weights_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18(num_classes=1000)  # stands in for the downloaded file
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    network = build_network("resnet18", "imagenet")
    assert network.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(network.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(network.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert network.fc.weight.shape == (1, 512)


def test_imagenet_init_offline_is_one_line_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PneumoniaError) as info:
        build_network("densenet121", "imagenet")
    message = str(info.value)
    assert "\n" not in message and "train.init imagenet" in message
    assert str(tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in message


def test_init_from_a_state_dict_path(tmp_path):
    source = build_network("resnet18")
    torch.save(source.state_dict(), tmp_path / "own.pt")
    network = build_network("resnet18", str(tmp_path / "own.pt"))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(network.state_dict()[key], value)

    rgb = torchvision.models.resnet18(num_classes=1000)  # e.g. weights from another task: RGB stem, 1000 classes
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    network = build_network("resnet18", str(tmp_path / "rgb.pt"))
    torch.testing.assert_close(network.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert network.fc.weight.shape == (1, 512)

    for path, match in ((tmp_path / "own.pt", "does not fit a resnet34"), (tmp_path / "missing.pt", "no such file")):
        with pytest.raises(PneumoniaError, match=match) as info:
            build_network("resnet34", str(path))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("schedule", "warmup", "check"),
    [
        # 3 epochs of 2 steps; one warm-up epoch = 2 steps from lr/100, then down to 0 (logged before each step)
        ("cosine", 1, lambda lrs: lrs[0] == pytest.approx(1e-5) and lrs[2] == pytest.approx(1e-3)
         and lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] < 2e-4),
        ("onecycle", 0, lambda lrs: lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) > 5e-4 and lrs[-1] < 1e-5),
        ("constant", 1, lambda lrs: lrs[0] == pytest.approx(1e-5) and lrs[2:] == pytest.approx([1e-3] * 4)),
    ],
)
def test_learning_rate_schedules(processed, schedule, warmup, check):
    out = train_with(processed, f"lr-{schedule}", optimizer="adamw", weight_decay=0.01, lr=1e-3,
                     lr_schedule=schedule, warmup_epochs=warmup, max_epochs=3)
    # Lightning's LearningRateMonitor logs every step's learning rate through DVCLive when a schedule is set.
    rows = (out / "dvclive" / "plots" / "metrics" / "train" / "lr.tsv")
    lrs = [float(line.split("\t")[-1]) for line in rows.read_text().splitlines()[1:]]
    assert len(lrs) == 3 * 2 and check(lrs), lrs


def test_early_stopping_ends_a_run_that_stops_improving(processed, tmp_path):
    # A copy whose val images are all black: val AUROC hovers at chance and soon stops improving.
    root = tmp_path / "flat"
    (root / "processed").mkdir(parents=True)
    for item in (processed / "processed").iterdir():
        (root / "processed" / item.name).write_bytes(item.read_bytes())
    (root / "dataset.json").write_bytes((processed / "dataset.json").read_bytes())
    val = np.load(root / "processed" / "val.npy")
    np.save(root / "processed" / "val.npy", np.zeros_like(val))
    out = train_with(root, "stopped", early_stopping_patience=1, max_epochs=6)
    rows = (out / "dvclive" / "plots" / "metrics" / "val" / "auroc.tsv").read_text().splitlines()[1:]
    aurocs = [float(row.split("\t")[-1]) for row in rows]
    # Patience 1: the run ends with the first epoch that is no better than the best before it.
    first_without_gain = next(e for e in range(1, len(aurocs) + 1) if e == len(aurocs) or aurocs[e] <= max(aurocs[:e]))
    assert len(aurocs) < 6 and first_without_gain == len(aurocs) - 1, aurocs


def test_batch_augmentation_draws_per_image_on_the_batch_device():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 64, 64)
    image[..., 16:48, 16:48] = 1.0
    out = batch_augmentation(64)(image.repeat(8, 1, 1, 1))
    assert out.shape == (8, 1, 64, 64) and out.device == image.device
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # a warp of its own for each image


def test_augment_on_device_trains_on_the_cpu_too(processed):
    out = train_with(processed, "device-augment", augment_on="device")
    assert (out / "augmented.png").exists()
    assert load_classifier(out / "model.safetensors").arch == "resnet18"
