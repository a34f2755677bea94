"""Class activation maps, boxes from maps, and the localize stage (the CAM baseline) on tiny data."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.evaluation import box_metrics
from pneumonia.localization import localize
from pneumonia.localization import cam as loc
from pneumonia.data import compute_stats
from pneumonia.data.phantom.patients import NORMAL, draw_patients
from pneumonia.data.phantom.render import render
from pneumonia.classification import train
from pneumonia.core.errors import DatasetError
from pneumonia.data.manifest import ManifestRow, read_manifest, split_rows, write_manifest
from pneumonia.core.architectures import build_network
from pneumonia.classification.classifier import load_classifier
from pneumonia.classification.data import batches, standardize
from project_params import project_params

# --------------------------------------------------------------------------- maps and regions


def test_regions_from_a_hand_built_map():
    cam = np.full((20, 20), 0.1, dtype=np.float32)
    cam[2:6, 3:8] = 1.0  # rows 2-5, columns 3-7
    cam[10:15, 12:16] = 0.8  # rows 10-14, columns 12-15
    cam[18, 1] = 0.9  # one pixel: 1/400 of the map, below min_area
    regions = loc.regions_from_map(cam, cam_threshold=0.5, min_area=0.01)
    assert {r.box for r in regions} == {(3, 2, 5, 4), (12, 10, 4, 5)}
    by_box = {r.box: r for r in regions}
    assert by_box[(3, 2, 5, 4)].area_fraction == pytest.approx(20 / 400)
    assert by_box[(3, 2, 5, 4)].strength == pytest.approx(1.0)
    assert by_box[(12, 10, 4, 5)].strength == pytest.approx(0.8)
    assert len(loc.regions_from_map(cam, cam_threshold=0.5, min_area=0.0)) == 3
    assert loc.regions_from_map(np.zeros((8, 8)), 0.5, 0.0) == []


def test_map_cells_sit_where_their_receptive_fields_peak():
    # layer4 cell j of ResNet18 is centred on input pixel 32j (centre 32j + 0.5), whatever the image size.
    assert loc.cell_centres(4, input_size=128, original_size=128, arch="resnet18").tolist() == [0.5, 32.5, 64.5, 96.5]
    assert loc.cell_centres(4, input_size=128, original_size=1024, arch="resnet18").tolist() == [4.0, 260.0, 516.0, 772.0]
    cam = np.zeros((2, 4), dtype=np.float32)
    cam[1, 2] = 3.0
    assert loc.map_peak(cam, rows=640, columns=128, input_size=64, arch="resnet18") == (129.0, 325.0)


def test_upsampling_interpolates_between_cell_centres():
    # A 2x2 map of a 64x64 input, upsampled to 64x64: cell centres at pixels 0 and 32, so along each
    # axis the hot cell weighs 1 - k/32 at pixel k up to 32, then 0 (held flat beyond the last centre).
    cam = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    up = loc.upsample_map(cam, 64, 64, input_size=64, arch="resnet18")
    weight = np.clip(1 - np.arange(64) / 32, 0, None)
    np.testing.assert_allclose(up, np.outer(weight, weight), atol=1e-6)
    assert up[0, 0] == pytest.approx(1.0) and up[16, 0] == pytest.approx(0.5) and up[40:, :].max() == 0.0


def test_localize_map_boxes_in_original_pixels():
    # The same map, image 64x64 originally: the region at half the maximum is where
    # (1 - r/32)(1 - c/32) >= 1/2; its box starts at the corner and spans 17 pixels (0..16).
    cam = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    result = loc.localize_map(cam, 0.8, 0.5, 64, 64, 64, pixel_spacing_mm=0.5, cam_threshold=0.5, min_area=0.0,
                              arch="resnet18")
    weight = np.clip(1 - np.arange(64) / 32, 0, None)
    up = np.outer(weight, weight)
    inside = up >= 0.5
    assert result.positive and len(result.boxes) == 1
    box = result.boxes[0]
    assert box.xywh == (0.0, 0.0, 17.0, 17.0)
    assert box.area_fraction == pytest.approx(inside.sum() / 64**2)
    assert result.area_fraction == pytest.approx(box.area_fraction)
    assert result.area_mm2 == pytest.approx(inside.sum() * 0.25)
    assert box.confidence == pytest.approx(0.8 * up[inside].mean(), rel=1e-5)  # probability x strength
    assert result.peak == (0.5, 0.5)

    below = loc.localize_map(cam, 0.3, 0.5, 64, 64, 64, pixel_spacing_mm=None, cam_threshold=0.5, min_area=0.0,
                              arch="resnet18")
    assert not below.positive and below.boxes == () and below.area_fraction == 0.0 and below.area_mm2 is None


def test_the_peak_is_taken_before_the_relu():
    # No positive evidence anywhere: the map is zero, but the peak is still the least negative cell.
    evidence = np.array([[-3.0, -2.0], [-0.5, -4.0]], dtype=np.float32)
    result = loc.localize_map(evidence, 0.9, 0.5, 64, 64, 64, pixel_spacing_mm=None, cam_threshold=0.5, min_area=0.0,
                              arch="resnet18")
    assert result.peak == (0.5, 32.5)
    assert result.boxes == () and float(result.cam.max()) == 0.0


def test_class_activation_maps_equal_a_direct_computation():
    torch.manual_seed(0)
    network = build_network("resnet18").eval()
    images = torch.randn(3, 1, 64, 64)
    probs, cams = loc.class_activation_maps(network, images, "resnet18", temperature=2.0)
    with torch.no_grad():
        x = network.maxpool(network.relu(network.bn1(network.conv1(images))))
        features = network.layer4(network.layer3(network.layer2(network.layer1(x))))
        direct = torch.relu((features * network.fc.weight[0][None, :, None, None]).sum(dim=1))
        logits = network(images)[:, 0]
    assert cams.shape == (3, 2, 2) and cams.dtype == torch.float32
    torch.testing.assert_close(cams, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs, torch.sigmoid(logits / 2.0))
    assert not cams.requires_grad
    # Before the ReLU, the map's mean plus the fc bias is the logit (global average pooling).
    _, evidence = loc.class_activation_maps(network, images, "resnet18", relu=False)
    torch.testing.assert_close(evidence.mean(dim=(1, 2)) + network.fc.bias[0], logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.relu(evidence), cams)


# --------------------------------------------------------------------------- a small model trained on phantoms

ORIGINAL = 256  # side of the phantom images, pixels: the "original" size the boxes are in
IMAGE_SIZE = 128  # what the model sees; layer4 is then a 4 x 4 map
TRAIN = project_params(
    {"train": {"max_epochs": 6, "batch_size": 16, "lr": 1e-3, "augment": True, "grid_images": 2, "accelerator": "cpu"}}
).train
# The phantom as generate() draws it (22 % positives, "Not Normal" negatives, contrast 0.35) is too hard for
# the seconds of training a test can spend (val AUROC about 0.55). Balanced classes with Normal negatives
# learn, but at contrast 0.35 the pointing game swung from 0.15 to 0.6 over three training seeds; with
# opaque clouds (1.0) it gave 0.55-0.85 against 0.25 for random points.
OPACITY_CONTRAST = 1.0


@pytest.fixture(scope="module")
def localized(tmp_path_factory):
    """100 opacity and 100 Normal phantoms, processed (60 % train); a model trained on them; localize's outputs."""
    root = tmp_path_factory.mktemp("localize")
    processed = root / "processed"
    processed.mkdir()
    patients = draw_patients(600, seed=3)
    positives = [p for p in patients if p.opacities][:100]
    normals = [p for p in patients if p.class_name == NORMAL][:100]
    chosen = [p for pair in zip(positives, normals) for p in pair]
    n_train = int(0.6 * len(chosen))
    arrays, rows = {"train": [], "val": []}, []
    for i, patient in enumerate(chosen):
        split = "train" if i < n_train else "val"
        rendering = render(patient, ORIGINAL, opacity_contrast=OPACITY_CONTRAST)
        image = Image.fromarray(rendering.pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        arrays[split].append(np.asarray(image))
        rows.append(
            ManifestRow(
                patient_id=patient.patient_id, split=split, row=len(arrays[split]) - 1,
                label=int(bool(rendering.boxes)),
                boxes=tuple((b.x, b.y, b.width, b.height) for b in rendering.boxes),
                detailed_class=patient.class_name, view=patient.view, sex=patient.sex, age=patient.age,
                rows=ORIGINAL, columns=ORIGINAL,
                pixel_spacing_mm=None if i % 10 == 9 else patient.pixel_spacing,
            )
        )
    for split, images in arrays.items():
        np.save(processed / f"{split}.npy", np.stack(images))
    write_manifest(processed / "manifest.csv", rows)
    compute_stats.run(processed, root / "dataset.json")
    model_path = root / "model.safetensors"
    train.run(processed, root / "dataset.json", TRAIN, seed=11, model_path=model_path, live_dir=root / "dvclive")
    outputs = {
        "out_json": root / "reports" / "localization.json",
        "headline_json": root / "metrics" / "cam.json",
        "overlays_dir": root / "plots" / "localization",
        "boxes_csv": root / "localization" / "boxes.csv",
    }
    result = localize.run(processed, model_path, project_params({"localize": {"overlays": 7}}).localize, **outputs)
    return root, model_path, outputs, result


def test_the_pointing_game_counts_val_positives_whose_map_peaks_inside_a_box(localized):
    """What localize reports is the share of val positives whose own map's hottest cell lies in one of their boxes,
    recomputed here from the model file with the plain map (the network's features times the head's weights).

    Not asserted: that the trained model beats random points. Over training seeds 11-13 and the AVX2 and default
    CPU dispatches, 6 epochs on these 120 images gave val AUROC 0.91-1.00 but a pointing game of 0.20-0.78
    against 0.24 for random points (issue 33: 0.250 vs 0.245 on an AVX-512 machine): where the map peaks is not
    a reliable consequence of so little training, so no margin holds across CPUs, and a test asserting one would
    test one instruction set's arithmetic.
    """
    root, model_path, _, result = localized
    model = load_classifier(model_path)
    val = split_rows(read_manifest(root / "processed"), "val")
    maps = []
    with torch.no_grad():  # in localize's batches: a convolution's last bits may depend on the batch's size
        for _, batch in batches(np.load(root / "processed" / "val.npy"), project_params().localize.batch_size, "cpu"):
            maps += list(loc.class_activation_maps(model.network, standardize(batch, model.mean, model.std),
                                                   model.arch, relu=False)[1].numpy())
    hits = []
    for row, evidence in zip(val, maps):
        if row.boxes:
            x, y = loc.map_peak(evidence, row.rows, row.columns, IMAGE_SIZE, model.arch)
            hits.append(any(bx <= x <= bx + bw and by <= y <= by + bh for bx, by, bw, bh in row.boxes))
    assert len(hits) == 40
    assert result["val"]["pointing_game"] == pytest.approx(np.mean(hits))
    # Random points drawn from the central 60 % (where the lungs lie) would land in these boxes about a quarter of
    # the time: the share of that square the boxes cover.
    low, high = 0.2 * ORIGINAL, 0.8 * ORIGINAL

    def covered(boxes):
        clipped = []
        for x, y, w, h in boxes:
            x0, y0, x1, y1 = max(x, low), max(y, low), min(x + w, high), min(y + h, high)
            if x1 > x0 and y1 > y0:
                clipped.append((x0, y0, x1 - x0, y1 - y0))
        return box_metrics.union_area(clipped) / (high - low) ** 2

    assert 0.15 < float(np.mean([covered(r.boxes) for r in val if r.boxes])) < 0.35


def _keys(tree, prefix=""):
    for key, value in tree.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _keys(value, prefix + key + "/")


def test_run_writes_metrics_boxes_and_overlays(localized):
    root, _, outputs, result = localized
    assert json.loads(outputs["out_json"].read_text()) == result
    headline = json.loads(outputs["headline_json"].read_text())
    assert headline == {"split": "val", "rsna_score": round(result["val"]["rsna_score"], 3),
                        "size_spearman": round(result["val"]["size_true_positives"]["spearman"], 3)}
    assert not [k for k in _keys(result) if "." in k]
    metrics = result["val"]
    assert metrics["n"] == 80 and metrics["positive"] == 40
    assert list(metrics["iobb_accuracy"]) == ["t0p10", "t0p25", "t0p50", "t0p75"]
    assert list(metrics["iou_accuracy"]) == ["t0p10", "t0p20", "t0p30", "t0p40", "t0p50", "t0p60", "t0p70"]
    accuracies = [*metrics["iobb_accuracy"].values(), *metrics["iou_accuracy"].values()]
    assert all(0 <= a <= 1 for a in accuracies)
    assert list(metrics["iobb_accuracy"].values()) == sorted(metrics["iobb_accuracy"].values(), reverse=True)
    assert 0 <= metrics["rsna_score"] <= 1

    val = {r.patient_id: r for r in split_rows(read_manifest(root / "processed"), "val")}
    with open(outputs["boxes_csv"], newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert list(lines[0]) == localize.BOXES_COLUMNS
    assert {line["patient_id"] for line in lines} == set(val)
    boxes = [line for line in lines if line["x"]]
    assert len(boxes) == metrics["predicted_boxes"]
    for line in boxes:
        x, y, w, h = (float(line[k]) for k in ("x", "y", "width", "height"))
        assert line["predicted"] == "1" and 0 <= x and 0 <= y and x + w <= ORIGINAL and y + h <= ORIGINAL
        assert 0 < float(line["confidence"]) <= float(line["probability"])
        assert (line["area_mm2"] == "") == (val[line["patient_id"]].pixel_spacing_mm is None)
    assert all(line["predicted"] == "0" for line in lines if float(line["probability"]) < 0.5)
    true_positives = {line["patient_id"] for line in lines if line["predicted"] == "1" and line["label"] == "1"}
    assert metrics["size_true_positives"]["n"] == len(true_positives)

    overlays = sorted(outputs["overlays_dir"].glob("*.png"))
    assert 1 <= len(overlays) <= 7 and all(p.name[:3] in ("tp_", "fp_", "fn_") for p in overlays)
    assert sorted(o["file"] for o in metrics["overlays"]) == [p.name for p in overlays]
    assert all(o["patient_id"] in val for o in metrics["overlays"])
    with Image.open(overlays[0]) as png:
        assert png.size == (512, 512) and png.mode == "RGB"


def _overlay_cases(prefix: str, n: int = 9) -> tuple[list[ManifestRow], list[loc.ImageLocalization]]:
    """``n`` 64-pixel images, a true positive, a false positive and a miss in turn, probabilities falling."""
    rows, results = [], []
    for i in range(n):
        label, positive = i % 3 != 1, i % 3 != 2
        box = loc.PredictedBox(8.0, 8.0, 20.0, 24.0, confidence=0.5, area_fraction=0.1)
        rows.append(ManifestRow(
            patient_id=f"{prefix}-{i:04d}", split="val", row=i, label=int(label),
            boxes=((10.0, 10.0, 20.0, 20.0),) if label else (), detailed_class="", view="PA", sex="F", age=50,
            rows=64, columns=64, pixel_spacing_mm=None,
        ))
        results.append(loc.ImageLocalization(
            probability=0.9 - 0.05 * i if positive else 0.3 - 0.01 * i, positive=positive,
            cam=np.random.default_rng(i).random((4, 4)).astype(np.float32), peak=(20.0, 20.0),
            boxes=(box,) if positive else (), area_fraction=0.1 if positive else 0.0, area_mm2=None, arch="resnet18",
        ))
    return rows, results


def test_overlays_are_named_by_role_and_rank_never_by_patient(tmp_path):
    # Two runs over different patients write the same file names (no churn in git, nothing stale left behind);
    # which patient each shows is in the returned list, that the stage writes into its report.
    images = np.full((9, 64, 64), 128, dtype=np.uint8)
    expected = ["fn_01.png", "fn_02.png", "fp_01.png", "fp_02.png", "tp_01.png", "tp_02.png"]
    for seed, prefix in enumerate(("first", "second")):
        rows, results = _overlay_cases(prefix)
        shown = localize.write_overlays(tmp_path / "overlays", images, rows, results, count=6, seed=seed)
        assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == expected
        assert sorted(o["file"] for o in shown) == expected
        assert all(o["patient_id"].startswith(prefix) and prefix not in o["file"] for o in shown)
        for role in ("tp", "fp", "fn"):  # rank 1 is the most confident of its role, as the detector ranks
            ranked = sorted((o for o in shown if o["role"] == role), key=lambda o: o["rank"])
            assert [o["probability"] for o in ranked] == sorted((o["probability"] for o in ranked), reverse=True)


def test_run_gives_boxes_only_above_the_threshold(localized, tmp_path):
    root, model_path, _, first = localized
    threshold = 0.9
    result = localize.run(
        root / "processed", model_path, project_params({"localize": {"threshold": threshold, "overlays": 0}}).localize,
        out_json=tmp_path / "l.json", overlays_dir=tmp_path / "overlays", boxes_csv=tmp_path / "boxes.csv",
    )
    with open(tmp_path / "boxes.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert all(float(line["probability"]) >= threshold for line in lines if line["x"])
    assert all(line["predicted"] == str(int(float(line["probability"]) >= threshold)) for line in lines)
    assert result["val"]["threshold"] == threshold
    assert result["val"]["predicted_boxes"] <= first["val"]["predicted_boxes"]
    assert result["val"]["pointing_game"] == first["val"]["pointing_game"]  # the map does not depend on the threshold
    assert list((tmp_path / "overlays").iterdir()) == []


def test_run_on_a_missing_split_names_it(localized, tmp_path):
    root, model_path, _, _ = localized
    with pytest.raises(DatasetError, match="no images in split 'test'"):
        localize.run(root / "processed", model_path, project_params().localize, out_json=tmp_path / "l.json", split="test")


def test_overlay_draws_both_kinds_of_box(tmp_path):
    from pneumonia.reporting.overlay import PREDICTED_COLOUR, TRUTH_COLOUR, draw_overlay, heat_colours

    assert heat_colours(np.array([0.0, 1.0])).tolist() == [[0, 0, 0], [255, 255, 230]]
    cam = np.zeros((64, 64), np.float32)
    cam[20:30, 20:30] = 2.0
    path = tmp_path / "o.png"
    # Display at 128 px: the image scales by 2, boxes too.
    image = np.full((64, 64), 100, np.uint8)
    draw_overlay(image, cam, [(8, 8, 16, 16)], [(40, 30, 10, 10)], 0.5, path, display_size=128)
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape == (128, 128, 3)
    assert tuple(pixels[32, 16]) == PREDICTED_COLOUR and tuple(pixels[70, 80]) == TRUTH_COLOUR
    assert pixels[50, 50, 0] > pixels[50, 50, 2]  # warm where the map is hot
    assert tuple(pixels[100, 100]) == (100, 100, 100)  # untouched where it is cold
    with pytest.raises(ValueError, match="cam shape"):
        draw_overlay(np.zeros((64, 64), np.uint8), np.zeros((8, 8)), [], None, 0.5, tmp_path / "x.png")
