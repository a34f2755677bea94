"""`pneumonia export --onnx` and `predict --backend onnxruntime`: ONNX Runtime against PyTorch on real DICOMs.

The predictor here has an untrained classifier (random weights and batch-norm statistics: the forward,
not its accuracy, is compared) and the tiny predictor's untrained detector at half the classifier's
size, so the detector's resize runs too; its decision and guard thresholds are set between the images'
own values, so both labels, boxes and a refused image all occur.
"""

import csv
import dataclasses
import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from pneumonia.data.phantom.dicom_writer import write_dicom
from pneumonia.data.phantom.patients import draw_patients
from pneumonia.data.phantom.render import render
from pneumonia.__main__ import main
from pneumonia.core.architectures import build_network
from pneumonia.classification.data import as_batch, standardize
from pneumonia.detection.data import resize_images
from pneumonia.detection.detector import detect_images
from pneumonia.detection.tta import FlipMerge
from pneumonia.data.dicom.read import read_dicom_sizes
from pneumonia.classification.inference import classifier_outputs
from pneumonia.core.model_file import read_model, save_model
from pneumonia.prediction.onnx_backend import load_onnx_predictor, predictor_settings
from pneumonia.prediction.onnx_export import OPSET
from pneumonia.prediction.predictor import answers, load_predictor, raw_outputs
from tiny_predictor import write_predictor

SIZE = 64  # the classifier's input; the detector's is half
TOLERANCE = 1e-4  # max absolute difference between ONNX Runtime's and PyTorch's outputs


def write_classifier(path):
    torch.manual_seed(3)
    network = build_network("resnet18")
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics of their own, as a trained network has
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        network.fc.weight.mul_(30)  # logits spread over a few units, as a trained head's are
    header = {"arch": "resnet18", "image_size": SIZE, "mean": 0.45, "std": 0.25, "threshold": 0.5,
              "temperature": 1.3, "windowing": "auto"}
    save_model(path, "classifier", network.state_dict(), header)
    return path


def between(values, index):
    """A threshold between the sorted ``values``' ``index - 1``-th and ``index``-th, far from both."""
    low, high = np.sort(values)[index - 1 : index + 1]
    assert high - low > 1e-3, "the images' values are too close to split: change the test images"
    return float((low + high) / 2)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Eight phantom DICOMs of two sizes, JPEG and uncompressed, positives and negatives."""
    folder = tmp_path_factory.mktemp("dicoms")
    for i, patient in enumerate(draw_patients(8, seed=4)):
        side = 128 if i % 2 else 192
        write_dicom(folder / f"{i}.dcm", render(patient, side).pixels,
                    patient_id=patient.patient_id, pixel_spacing=0.5, jpeg=i % 3 != 0)
    return folder


def read_images(folder, windowing):
    infos, images = [], []
    for path in sorted(folder.glob("*.dcm")):
        rendered, info = read_dicom_sizes(path, (SIZE,), windowing=windowing)
        images.append(rendered[0])
        infos.append(info)
    return np.stack(images), [(i.rows, i.columns) for i in infos]


@pytest.fixture(scope="module")
def model(tmp_path_factory, dicoms):
    """The predictor file, its thresholds set between the images' own probabilities and distances."""
    root = tmp_path_factory.mktemp("model")
    classifier = write_classifier(root / "classifier.safetensors")
    path = write_predictor(root / "pneumonia.safetensors", classifier, detector_size=SIZE // 2)
    predictor = load_predictor(path)
    images, sizes = read_images(dicoms, predictor.windowing)
    found = answers(predictor, raw_outputs(predictor.classifier, predictor.detector, images, sizes, 8), True)
    threshold = between([a.probability for a in found], len(found) // 2)
    ood_threshold = between([a.distance for a in found], len(found) - 1)  # the farthest image is refused
    return write_predictor(path, classifier, detector_size=SIZE // 2, threshold=threshold,
                           ood_threshold=ood_threshold)


@pytest.fixture(scope="module")
def export(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", "--onnx", str(folder), "--model", str(model)]) == 0
    return folder


def test_the_export_folder_holds_both_networks_and_every_number(model, export):
    assert sorted(p.name for p in export.iterdir()) == ["classifier.onnx", "detector.onnx", "predictor.json"]
    settings = json.loads((export / "predictor.json").read_text())
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    assert settings["source"] == {"file": model.name, "sha256": sha256} and settings["opset"] == OPSET == 18
    assert "synthetic phantom" in settings["note"]
    header, tensors = read_model(model, "predictor", "")
    for key in ("decision", "box_threshold", "trained_on"):
        assert settings[key] == header[key]
    assert settings["classifier"] == header["classifier"] and settings["detector"] == header["detector"]
    assert settings["ood"]["threshold"] == header["ood"]["threshold"]
    # float64 written exactly: the guard measures the same distances
    assert np.array_equal(np.asarray(settings["ood"]["mean"]), tensors["ood.mean"].numpy())
    assert np.array_equal(np.asarray(settings["ood"]["precision"]), tensors["ood.precision"].numpy())
    for name, outputs in (("classifier", ["logit", "features"]), ("detector", ["heatmap", "distances", "image_logit"])):
        graph = onnx.load(export / f"{name}.onnx")
        onnx.checker.check_model(graph)
        assert [(o.domain, o.version) for o in graph.opset_import if o.domain == ""] == [("", OPSET)]
        assert [o.name for o in graph.graph.output] == outputs
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic
        meta = {p.key: p.value for p in graph.metadata_props}
        assert meta == {"pneumonia.network": name, "pneumonia.source_sha256": sha256}


def test_onnx_runtime_matches_pytorch_on_real_dicoms(model, export, dicoms):
    torch_predictor = load_predictor(model)
    onnx_predictor, forward = load_onnx_predictor(export)
    images, sizes = read_images(dicoms, torch_predictor.windowing)
    logits, features = classifier_outputs(torch_predictor.classifier, images, 8)
    detector = torch_predictor.detector
    inputs = standardize(resize_images(as_batch(images), detector.image_size), detector.mean, detector.std)
    with torch.inference_mode():
        heads = detector.network(inputs)
    for batch_size in (1, 3, 8):  # the batch axis is dynamic
        found = forward(images, sizes, batch_size)
        assert np.abs(found.classifier_logits - logits).max() <= TOLERANCE
        assert np.abs(found.features - features).max() <= TOLERANCE
        assert np.abs(found.detector_logits - heads.image_logit.double().numpy()).max() <= TOLERANCE
    onnx_heads = onnx_predictor.detector.network(inputs)
    for name, ours, theirs in zip(heads._fields, onnx_heads, heads):
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() <= TOLERANCE, name


def test_onnx_runtime_applies_the_detectors_flip_as_pytorch_does(model, export, dicoms, tmp_path):
    merge = FlipMerge("wbf", 0.5)
    torch_predictor = load_predictor(model)
    flipped = dataclasses.replace(torch_predictor.detector, tta=merge)
    settings = predictor_settings(dataclasses.replace(torch_predictor, detector=flipped))
    assert settings["detector"]["tta"] == {"method": "wbf", "iou": 0.5}  # what export writes for such a detector
    folder = tmp_path / "onnx"
    shutil.copytree(export, folder)
    written = json.loads((folder / "predictor.json").read_text())
    (folder / "predictor.json").write_text(json.dumps(written | {"detector": settings["detector"]}))
    onnx_predictor, forward = load_onnx_predictor(folder)
    assert onnx_predictor.detector.tta == merge
    images, sizes = read_images(dicoms, torch_predictor.windowing)
    ours, theirs = forward(images, sizes, 8).detections, detect_images(flipped, images, sizes, 8)
    alone = detect_images(torch_predictor.detector, images, sizes, 8)
    assert sum(len(a.boxes) for a in ours) >= len(ours)  # boxes to compare
    for a, b, c in zip(ours, theirs, alone, strict=True):
        assert a.boxes.shape == b.boxes.shape and np.abs(a.boxes - b.boxes).max(initial=0) <= 0.1
        assert np.abs(a.scores - b.scores).max(initial=0) <= TOLERANCE
        assert abs(a.image_logit - b.image_logit) <= TOLERANCE and a.image_logit != c.image_logit


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def numbers(text):
    return [float(v) for v in text.replace(";", " ").split()]


def test_predict_gives_the_same_csv_with_either_backend(model, export, dicoms, tmp_path, capsys):
    codes = {backend: main(["predict", str(dicoms), "--model", str(model if backend == "torch" else export),
                            "--backend", backend, "--out", str(tmp_path / f"{backend}.csv")])
             for backend in ("torch", "onnxruntime")}
    assert codes == {"torch": 3, "onnxruntime": 3}  # the farthest image is refused by both
    ours, theirs = read_csv(tmp_path / "onnxruntime.csv"), read_csv(tmp_path / "torch.csv")
    assert [r["status"] for r in ours].count("unlike_training") == 1
    assert {r["label"] for r in ours} == {"", "0", "1"} and any(r["boxes"] for r in ours)
    for a, b in zip(ours, theirs, strict=True):
        assert {k: a[k] for k in ("file", "status", "label", "out_of_distribution")} == {
            k: b[k] for k in ("file", "status", "label", "out_of_distribution")}
        for key, tolerance in (("probability", TOLERANCE), ("classifier_probability", TOLERANCE),
                               ("detector_probability", TOLERANCE), ("confidences", TOLERANCE),
                               ("boxes", 0.1), ("ood_distance", 0.1), ("area_percent", 0.01)):
            x, y = numbers(a[key]), numbers(b[key])  # as printed: within the tolerance or the last digit
            assert len(x) == len(y) and all(abs(u - v) <= tolerance + 1e-9 for u, v in zip(x, y)), (key, a, b)
    capsys.readouterr()


@pytest.mark.parametrize("case", ["model file", "no folder", "no detector", "mixed export"])
def test_a_bad_export_folder_is_one_line(case, model, export, dicoms, tmp_path, capsys):
    folder = tmp_path / "onnx"
    if case == "model file":
        folder = model
    elif case in ("no detector", "mixed export"):
        shutil.copytree(export, folder)
        if case == "no detector":
            (folder / "detector.onnx").unlink()
        else:  # settings from another model file beside these networks
            settings = json.loads((folder / "predictor.json").read_text())
            settings["source"]["sha256"] = "0" * 64
            (folder / "predictor.json").write_text(json.dumps(settings))
    out = tmp_path / "p.csv"
    assert main(["predict", str(dicoms), "--backend", "onnxruntime", "--model", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pneumonia predict: error: {folder}") and "export --onnx" in err[0]
    assert not out.exists()


def test_export_refuses_a_folder_holding_other_files(model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", "--onnx", str(tmp_path), "--model", str(model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0] and "new folder" in err[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_of_a_missing_model_file_is_one_line(tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "onnx"), "--model", str(tmp_path / "none.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.safetensors: model file not found" in err[0]
    assert not (tmp_path / "onnx").exists()
