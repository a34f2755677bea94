"""The detector on every backbone of the registry (``detect.arch``), both necks, and ``detect.init``.

Each backbone goes the whole way at a tiny size: one optimisation step, the model file, detection; and
its ONNX export runs in ONNX Runtime. The default detector's identity with the one before the registry's
backbones (parameters, names, forward) was checked once against the old class; see the commit adding it.
"""

import urllib.error

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision

from pneumonia.core.architectures import ARCHITECTURES, architecture, build_network
from pneumonia.classification.data import as_batch, standardize
from pneumonia.detection.detector import LoadedDetector, detect_images, load_detector, save_detector
from pneumonia.detection.network import build_detector
from pneumonia.detection.targets import detection_loss, encode_targets
from pneumonia.core.errors import PneumoniaError
from pneumonia.core.model_file import save_model
from pneumonia.prediction.onnx_backend import DETECTOR_OUTPUTS, OnnxNetwork
from pneumonia.prediction.onnx_export import export_network

SIZE, WIDTH, MEAN, STD = 64, 8, 0.4, 0.3
TOLERANCE = 1e-4  # ONNX Runtime against PyTorch, relative and absolute


def synthetic_batch():
    """Two noise images, one with a box (input pixels, xyxy), and their targets."""
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8)
    targets = [encode_targets(boxes, SIZE) for boxes in ([[8.0, 12.0, 40.0, 48.0]], np.zeros((0, 4)))]
    heatmap, box_target, box_weight = (torch.stack(parts) for parts in zip(*targets))
    return images, (heatmap, box_target, box_weight, torch.tensor([1.0, 0.0]))


def tiny_detector(network, arch, neck):
    return LoadedDetector(network, arch, WIDTH, SIZE, mean=MEAN, std=STD, image_threshold=0.0, box_threshold=0.0,
                          nms_iou=0.5, max_boxes=3, neck=neck)


@pytest.mark.parametrize("arch, neck", [(arch, "topdown") for arch in ARCHITECTURES] + [("resnet18", "fpn")])
def test_every_backbone_trains_saves_loads_and_detects(arch, neck, tmp_path):
    torch.manual_seed(0)
    network = build_detector(arch, WIDTH, neck)
    images, targets = synthetic_batch()
    inputs = standardize(as_batch(images), MEAN, STD)

    shapes = []  # of the stride-8/16/32 maps: the registry's channels
    hooks = [stage.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape[1:])))
             for stage in (network.layer2, network.layer3, network.layer4)]
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    detection_loss(network(inputs), *targets)["loss"].backward()
    assert [name for name, p in network.named_parameters() if p.grad is None] == []  # DDP wants every one used
    optimizer.step()
    for hook in hooks:
        hook.remove()
    assert shapes == [(channels, SIZE // stride, SIZE // stride)
                      for channels, stride in zip(architecture(arch).pyramid_channels, (8, 16, 32), strict=True)]

    path = tmp_path / "detector.safetensors"
    save_detector(path, network, tiny_detector(network, arch, neck))
    loaded = load_detector(path)
    assert (loaded.arch, loaded.neck, loaded.network.training) == (arch, neck, False)
    state = network.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.network.state_dict().items())
    found = detect_images(loaded, images, [(128, 96)] * 2, batch_size=2)
    assert len(found) == 2 and all(len(f.boxes) <= 3 and np.isfinite(f.boxes).all() for f in found)


# The exporter takes 20-80 s a backbone on one core: the default detector's export is test_onnx's, the FPN's is
# here, the other backbones' are marked exhaustive (make test-all).
@pytest.mark.parametrize("arch, neck", [("resnet18", "fpn")] + [
    pytest.param(arch, "topdown", marks=pytest.mark.exhaustive) for arch in ARCHITECTURES if arch != "resnet18"])
def test_every_backbone_runs_in_onnx_runtime(arch, neck, tmp_path):
    torch.manual_seed(0)
    network = build_detector(arch, WIDTH, neck).eval()
    inputs = standardize(as_batch(synthetic_batch()[0]), MEAN, STD)
    with torch.no_grad():
        heads = network(inputs)
    export_network(network, SIZE, DETECTOR_OUTPUTS, tmp_path / "detector.onnx", {})
    session = onnxruntime.InferenceSession(str(tmp_path / "detector.onnx"), providers=["CPUExecutionProvider"])
    for ours, theirs in zip(OnnxNetwork(session)(inputs), heads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)


def test_an_unknown_neck_in_a_model_file_is_one_line_naming_it(tmp_path):
    network = build_detector("resnet18", WIDTH)
    save_detector(tmp_path / "d.safetensors", network, tiny_detector(network, "resnet18", "topdown"), neck="bifpn")
    with pytest.raises(PneumoniaError) as info:
        load_detector(tmp_path / "d.safetensors")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "d.safetensors") in message and "'bifpn'" in message


def test_detect_init_imagenet_takes_the_backbone_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(num_classes=1000)  # stands in for the downloaded file
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    cached = tmp_path / "hub" / "checkpoints" / torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    torch.save(reference.state_dict(), cached)
    network = build_detector("resnet18", WIDTH, init="imagenet")
    torch.testing.assert_close(network.stem[0].weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(network.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)

    cached.unlink()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *args, **kwargs: (_ for _ in ()).throw(
        urllib.error.URLError("Temporary failure in name resolution")))
    with pytest.raises(PneumoniaError) as info:
        build_detector("resnet18", WIDTH, init="imagenet")
    message = str(info.value)
    assert "\n" not in message and "detect.init imagenet" in message and str(cached) in message


def test_detect_init_from_a_classifiers_state_dict(tmp_path):
    classifier = build_network("resnet34")
    torch.save(classifier.state_dict(), tmp_path / "classifier.pt")
    network = build_detector("resnet34", WIDTH, "fpn", init=str(tmp_path / "classifier.pt"))
    torch.testing.assert_close(network.layer4[2].conv2.weight, classifier.layer4[2].conv2.weight)
    with pytest.raises(PneumoniaError, match=r"^detect\.init .*missing\.pt: no such file"):
        build_detector("resnet34", WIDTH, init=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("change, words", [
    ({"image_size": 100}, "header image_size 100 is not an integer >= 32 and a multiple of 32"),
    ({"stride": 16}, "header stride 16 is not 8"),
    ({"arch": "vgg16"}, "header arch 'vgg16' is not a backbone this project builds (resnet18, "),
    ({"neck": "bifpn"}, "header neck 'bifpn' is not topdown or fpn"),
    ({"std": 0}, "header std 0 is not a positive number"),
    ({"width": 1.5}, "header width 1.5 is not an integer >= 1"),
    ({"nms_iou": "high"}, "header nms_iou 'high' is not a finite number"),
    ({"mean": None}, "header mean None is not a finite number"),
    ({"max_boxes": None}, "header lacks 'max_boxes'"),  # None here: the key deleted
])
def test_a_bad_detector_header_is_one_line_naming_the_key(change, words, tmp_path):
    network = build_detector("resnet18", WIDTH, "topdown")
    header = tiny_detector(network, "resnet18", "topdown").header() | change
    if change == {"max_boxes": None}:
        del header["max_boxes"]
    path = tmp_path / "detector.safetensors"
    save_model(path, "detector", network.state_dict(), header)
    with pytest.raises(PneumoniaError) as info:
        load_detector(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message
    assert message.endswith("retrain it with `dvc repro detect`")


def test_a_detector_file_from_before_the_registry_names_its_backbone_centernet_resnet18(tmp_path):
    network = build_detector("resnet18", WIDTH, "topdown")
    header = tiny_detector(network, "resnet18", "topdown").header() | {"arch": "centernet_resnet18"}
    del header["neck"]  # and had no neck: the top-down merge
    save_model(tmp_path / "old.safetensors", "detector", network.state_dict(), header)
    loaded = load_detector(tmp_path / "old.safetensors")
    assert (loaded.arch, loaded.neck) == ("resnet18", "topdown")
