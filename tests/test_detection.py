"""The detector: targets, decoding, box-aware augmentation, threshold choice, the model file, and a tiny
detector that learns a trivially separable box task (a bright rectangle on a dark background)."""

import json
import shutil

import numpy as np
import pytest
import torch

from pneumonia.classification.classifier import LoadedModel
from pneumonia.detection import evaluate_detection, detect
from pneumonia.detection.data import DetectionDataset
from pneumonia.detection.decode import decode
from pneumonia.detection.detector import ImageDetections, area_fraction, detect_images, load_detector
from pneumonia.detection.network import RawDetections
from pneumonia.core.boxes import boxes_to_input, boxes_to_original
from pneumonia.detection.targets import encode_targets, focal_heatmap_loss
from pneumonia.detection.thresholds import choose_box_thresholds, rsna_at
from pneumonia.core.errors import DatasetError, PneumoniaError
from pneumonia.data.manifest import write_manifest
from pneumonia.core.architectures import build_network
from pneumonia.core.model_file import save_model
from pneumonia.prediction.decision import Decision
from pneumonia.prediction.ood import OodGuard
from pneumonia.prediction.predictor import Predictor
from box_data import rectangles, square_rows
from project_params import project_params

# --------------------------------------------------------------------------- coordinates, targets, loss


def test_boxes_between_original_and_input_pixels():
    # A 1024 x 512 (rows x columns) original into a 128 input: x scales by 1/4, y by 1/8.
    inside = boxes_to_input([(100, 200, 40, 80)], rows=1024, columns=512, image_size=128)
    assert inside.tolist() == [[25.0, 25.0, 35.0, 35.0]]
    assert boxes_to_original(inside, rows=1024, columns=512, image_size=128).tolist() == [[100, 200, 40, 80]]


def test_targets_peak_at_the_centre_cell_and_regress_the_box():
    boxes = np.array([[16.0, 24.0, 48.0, 72.0], [80.0, 80.0, 88.0, 86.0]])  # the second smaller than a cell
    heatmap, box_target, box_weight = encode_targets(boxes, image_size=128)
    assert heatmap.shape == (1, 16, 16) and box_target.shape == (4, 16, 16) and box_weight.shape == (16, 16)
    # Centres (32, 48) and (84, 83) fall in cells (row 6, col 4) and (row 10, col 10).
    assert heatmap[0, 6, 4] == 1.0 and heatmap[0, 10, 10] == 1.0 and int((heatmap == 1).sum()) == 2
    assert box_target[:, 6, 4].tolist() == [16, 24, 48, 72] and box_target[:, 10, 10].tolist() == [80, 80, 88, 86]
    assert float(box_weight.sum()) == pytest.approx(2.0)  # each box weighs 1 in all
    assert heatmap.min() >= 0 and heatmap.max() <= 1


def test_focal_loss_rewards_the_right_peaks():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 3] = 1.0
    right, wrong = torch.full_like(target, -6.0), torch.full_like(target, -6.0)
    right[0, 0, 3, 3], wrong[0, 0, 6, 1] = 6.0, 6.0
    assert focal_heatmap_loss(right, target) < 0.01 < focal_heatmap_loss(wrong, target)


# --------------------------------------------------------------------------- decoding


def _raw(peaks: list[tuple[int, int, float]], distances: float, cells: int = 8, image_logit: float = 0.0):
    heatmap = torch.full((1, 1, cells, cells), -8.0)
    for row, col, logit in peaks:
        heatmap[0, 0, row, col] = logit
    return RawDetections(heatmap, torch.full((1, 4, cells, cells), distances), torch.tensor([image_logit]))


def test_decode_turns_peaks_into_boxes_most_confident_first():
    found = decode(_raw([(2, 3, 2.0), (6, 6, 4.0)], distances=4.0), image_size=64, max_boxes=4, nms_iou=0.5)[0]
    # Cell (row 6, col 6) is centred at (52, 52); distances of 4 px on every side.
    assert found.boxes[0].tolist() == [48, 48, 56, 56] and found.boxes[1].tolist() == [24, 16, 32, 24]
    assert found.scores.tolist() == pytest.approx(torch.sigmoid(torch.tensor([4.0, 2.0])).tolist())
    assert found.image_probability == pytest.approx(0.5)
    assert len(decode(_raw([(2, 3, 2.0), (6, 6, 4.0)], 4.0), 64, max_boxes=1, nms_iou=0.5)[0].boxes) == 1


def test_decode_suppresses_overlapping_boxes_and_clips_to_the_image():
    # Neighbouring cells are not 3x3 peaks of each other when separated by one cell; large boxes overlap.
    found = decode(_raw([(3, 3, 3.0), (3, 5, 2.0)], distances=30.0), image_size=64, max_boxes=4, nms_iou=0.5)[0]
    assert len(found.boxes) == 1 and found.boxes[0].tolist() == [0, 0, 58, 58]  # (28 - 30, ..., 28 + 30) clipped


# --------------------------------------------------------------------------- augmentation moves boxes with images


def _bright_boxes(image: torch.Tensor) -> list[float]:
    """The extent (x0, y0, x1, y1) of the bright pixels of a 1 x S x S image."""
    rows, cols = torch.nonzero(image[0] > image.mean() + 1.0, as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_augmentation_transforms_boxes_with_the_image(tmp_path):
    size, original = 64, 256
    images = np.full((40, size, size), 30, np.uint8)
    boxes = []
    rng = np.random.default_rng(0)
    for i in range(len(images)):
        x, y = rng.integers(12, 32, size=2)
        images[i, y : y + 20, x : x + 16] = 230
        boxes.append([(x * 4, y * 4, 16 * 4, 20 * 4)])  # original pixels: 4x the array's
    np.save(tmp_path / "train.npy", images)
    dataset = DetectionDataset(tmp_path / "train.npy", square_rows(images, boxes, "train", original), size,
                               mean=0.3, std=0.3, augment=True)
    torch.manual_seed(0)
    moved = 0
    for i in range(len(images)):
        image, heatmap, box_target, box_weight, label = dataset[i]
        assert label == 1 and image.shape == (1, size, size)
        target = box_target[:, box_weight > 0][:, 0].tolist()  # the (only) box the targets regress
        # The bright rectangle's extent and the transformed box agree within the resampling blur.
        assert target == pytest.approx(_bright_boxes(image), abs=2.5)
        moved += target != pytest.approx(dataset.input_boxes(i)[0].tolist(), abs=1.0)
    assert moved >= len(images) // 2  # the augmentation did move most boxes


# --------------------------------------------------------------------------- thresholds chosen together


def _detections(boxes, scores, image_probability):
    return ImageDetections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), image_probability, 100, 100)


def test_thresholds_are_chosen_together_and_the_empty_rule_holds():
    truth = [[(10, 10, 20, 20)], [], []]
    detections = [
        _detections([(10, 10, 20, 20), (60, 60, 10, 10)], [0.9, 0.3], 0.9),  # a true box and a weak false one
        _detections([(50, 50, 10, 10)], [0.8], 0.2),  # a confident box on a negative the image score rejects
        _detections([], [], 0.1),  # no truth, no prediction: left out of the RSNA score
    ]
    # Without a gate the negative's box scores 0 for that image; the weak box halves the positive's score.
    assert rsna_at(detections, truth, 0.0, 0.2) == pytest.approx((0.5 + 0.0) / 2)
    assert rsna_at(detections, truth, 0.5, 0.5) == pytest.approx(1.0)  # only the positive image counts
    choice = choose_box_thresholds(detections, truth, [0.2, 0.5, 0.95])
    assert choice.rsna_score == 1.0 and choice.box_threshold == 0.5 and choice.image_threshold == 0.5
    assert len(choice.grid) == 4 * 3  # the gate also tries 0 (none)


def test_box_metrics_against_hand_computed_values():
    rows = square_rows(np.zeros((3, 8, 8)), [[(10, 10, 20, 20)], [(50, 50, 20, 20)], []], "val", 100)
    detections = [
        _detections([(10, 10, 20, 20)], [0.9], 0.9),  # exact
        _detections([(50, 50, 20, 10)], [0.8], 0.9),  # IoU 0.5, half the area
        _detections([(0, 0, 5, 5)], [0.7], 0.9),  # a false positive on the negative
    ]
    result = evaluate_detection.box_metrics(detections, [d.kept(0.5, 0.5) for d in detections], rows)
    assert result["predicted_boxes"] == 3 and result["gt_boxes"] == 2
    assert result["recall_iou0p50"] == 1.0 and result["false_positives_per_image"] == pytest.approx(1 / 3)
    # RSNA: 1 for the exact box; IoU 0.5 beats 0.40 and 0.45 only (2 of 8); 0 for the negative with a box.
    assert result["rsna_score"] == pytest.approx((1 + 2 / 8 + 0) / 3)
    # COCO AP@0.5: boxes ranked 0.9 (TP), 0.8 (TP at IoU 0.5 >= 0.5), 0.7 (FP): both truths found first.
    assert result["ap50"] == pytest.approx(1.0)
    assert 0 < result["ap50_95"] < result["ap50"]
    size = result["size_true_positives"]
    assert size["n"] == 2 and size["mean_absolute_error"] == pytest.approx((0 + 0.02) / 2)
    assert result["size_true_positives_mm2"]["n"] == 1  # only the odd rows have PixelSpacing
    assert result["size_true_positives_mm2"]["mean_absolute_error_mm2"] == pytest.approx(200 * 0.25)


def test_the_bootstrapped_ap50_is_torchmetrics_ap50_on_the_full_set():
    rng = np.random.default_rng(0)
    detections, truth = [], []
    for _ in range(60):  # random truths and noisy guesses: hits, near misses, duplicates and ties
        true = [tuple(rng.uniform(0, 60, 2)) + tuple(rng.uniform(10, 40, 2)) for _ in range(rng.integers(0, 3))]
        guesses = [tuple(np.add(t, rng.normal(0, 4, 4))) for t in true if rng.random() < 0.8]
        guesses += [tuple(rng.uniform(0, 60, 2)) + tuple(rng.uniform(10, 40, 2)) for _ in range(rng.integers(0, 3))]
        scores = np.round(rng.uniform(0, 1, len(guesses)), 1)  # ties across images
        detections.append(ImageDetections(np.array(guesses).reshape(-1, 4), scores, 0.5, 100, 100))
        truth.append(true)
    everything = np.arange(len(truth))
    matched = [evaluate_detection._coco_matches(d, t) for d, t in zip(detections, truth)]
    expected = evaluate_detection.box_average_precision(detections, truth)["ap50"]
    assert evaluate_detection._ap_at(matched, [len(t) for t in truth], everything) == pytest.approx(expected, abs=1e-6)  # torchmetrics returns float32
    assert 0.1 < expected < 0.95  # neither trivial case
    ci = evaluate_detection.ap50_interval(detections, truth, resamples=200, seed=0)
    assert ci["low"] < expected < ci["high"] and ci["resamples_used"] == 200
    no_truth = [[] for _ in truth]
    assert evaluate_detection.ap50_interval(detections, no_truth, resamples=20, seed=0)["resamples_used"] == 0


def test_area_fraction_counts_overlaps_once():
    assert area_fraction([(0, 0, 10, 10), (5, 0, 10, 10)], rows=100, columns=100) == pytest.approx(0.015)


# --------------------------------------------------------------------------- a tiny detector learns


DETECT = {
    "arch": "resnet18", "width": 16, "image_size": 64, "max_epochs": 8, "lr": 0.003,
    "weight_decay": 0.0, "batch_size": 16, "negative_ratio": 0.25, "num_workers": 0, "accelerator": "cpu", "precision": "32-true",
    "augment": False, "score_thresholds": [0.1, 0.3, 0.5], "nms_iou": 0.3, "max_boxes": 2,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    processed = root / "processed"
    processed.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for split, n in (("train", 80), ("val", 30), ("test", 30)):
        images, boxes = rectangles(n, 64, 512, rng)
        np.save(processed / f"{split}.npy", images)
        rows += square_rows(images, boxes, split, 512)
    write_manifest(processed / "manifest.csv", rows)
    (root / "dataset.json").write_text(json.dumps({"mean": 0.2, "std": 0.3}))
    params = project_params({"detect": DETECT}).detect
    chosen = detect.run(processed, root / "dataset.json", params, seed=5, model_path=root / "detector.safetensors",
                          history_json=root / "epochs.json")
    return root, rows, chosen


def test_a_tiny_detector_learns_rectangles(trained):
    root, rows, chosen = trained
    history = json.loads((root / "epochs.json").read_text())
    assert [h["epoch"] for h in history] == list(range(DETECT["max_epochs"]))
    assert chosen["val_rsna_score"] == max(h["val_rsna_score"] for h in history)
    assert chosen["val_rsna_score"] >= 0.5, history
    detector = load_detector(root / "detector.safetensors")
    assert (detector.image_threshold, detector.box_threshold) == (chosen["image_threshold"], chosen["box_threshold"])
    val = [r for r in rows if r.split == "val"]
    found = detect_images(detector, np.load(root / "processed" / "val.npy"), [(r.rows, r.columns) for r in val], 16)
    # The model file gives back the score the stage chose with (same weights, same decoding).
    assert rsna_at(found, [r.boxes for r in val], detector.image_threshold, detector.box_threshold) == pytest.approx(
        chosen["val_rsna_score"]
    )
    # Boxes in original pixels: the rectangles are 80-184 px wide in a 512 image.
    kept = np.concatenate([d.kept(detector.image_threshold, detector.box_threshold)[0] for d in found])
    assert len(kept) and kept[:, 2:].min() > 40 and kept[:, 2:].max() < 300


def test_a_model_file_of_another_kind_or_shape_is_refused(trained, tmp_path):
    root, _, _ = trained
    with pytest.raises(PneumoniaError, match="not a detector"):
        save_model(tmp_path / "c.safetensors", "classifier", {"w": torch.zeros(1)}, {"arch": "resnet18"})
        load_detector(tmp_path / "c.safetensors")
    from safetensors import safe_open

    with safe_open(str(root / "detector.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["pneumonia"])["header"]
    save_model(tmp_path / "d.safetensors", "detector", {"w": torch.zeros(1)}, header)
    with pytest.raises(PneumoniaError, match="do not fit"):
        load_detector(tmp_path / "d.safetensors")
    save_model(tmp_path / "e.safetensors", "detector", {}, header | {"nms_iou": "high"})
    with pytest.raises(PneumoniaError, match="nms_iou"):
        load_detector(tmp_path / "e.safetensors")


def _detector_alone(root) -> Predictor:
    """The tiny detector's own image probability as the decision, at its own gate, as predict uses it alone.

    An untrained classifier beside it: the detector's numbers and the outputs' shape are what is tested.
    """
    classifier = LoadedModel(build_network("resnet18").eval(), "resnet18", 64, 0.2, 0.3, threshold=0.5, temperature=1.0)
    detector = load_detector(root / "detector.safetensors")
    decision = Decision("detector", "temperature", (0.0, 1.0), 0.0, None, detector.image_threshold)
    return Predictor(classifier, detector, decision, detector.box_threshold,
                     OodGuard(np.zeros(512), np.eye(512), 1e9, 0.99), {"source": "synthetic", "patients": {}})


def test_evaluation_writes_the_headline_report_plots_and_overlays(trained, tmp_path):
    root, rows, _ = trained
    params = project_params({"evaluate_detection": {"overlays": 2, "bootstrap_resamples": 50}})
    out = {"metrics_json": tmp_path / "metrics.json", "report_json": tmp_path / "reports" / "detection.json",
           "report_md": tmp_path / "reports" / "detection.md", "plots_dir": tmp_path / "plots"}
    report = evaluate_detection.run(root / "processed", _detector_alone(root), params.evaluate_detection, params.localize,
                            DETECT["score_thresholds"], seed=0, **out)
    assert json.loads(out["report_json"].read_text()) == json.loads(json.dumps(report))
    headline = json.loads(out["metrics_json"].read_text())
    test = report["test"]
    assert headline == evaluate_detection.headline(report) and headline["split"] == "test"
    assert headline["rsna_score"] == round(test["detector"]["rsna_score"], 3) >= 0.4
    assert test["detector"]["ap50"] >= test["detector"]["ap50_95"] > 0
    assert test["image_auroc"]["detector"]["auroc"] > 0.8  # rectangles or none: the image logit learns it too
    assert test["image_auroc"]["decision"]["auroc"] == test["image_auroc"]["detector"]["auroc"]
    assert test["boxes_under_negative_labels"] == 0
    ci = test["detector"]["rsna_score_ci95"]
    assert ci["low"] <= test["detector"]["rsna_score"] <= ci["high"] and ci["resamples_used"] == 50
    ci = test["detector"]["ap50_ci95"]
    assert ci["low"] <= test["detector"]["ap50"] <= ci["high"] and ci["resamples_used"] == 50
    ci = test["image_auroc"]["classifier"]["ci95"]
    assert ci["low"] <= test["image_auroc"]["classifier"]["auroc"] <= ci["high"]
    assert test["cam_baseline"]["n"] == 30 and not test["model_selected_on_this_split"]
    sweep = json.loads((tmp_path / "plots" / "thresholds.json").read_text())
    assert [s["box_threshold"] for s in sweep] == DETECT["score_thresholds"]
    assert all(set(p) == {"true_area_percent", "predicted_area_percent"}
               for p in json.loads((tmp_path / "plots" / "size.json").read_text()))
    overlays = sorted(p.name for p in (tmp_path / "plots" / "overlays").glob("*.png"))
    assert overlays and all(name[:3] in ("tp_", "fp_", "fn_") and name[3:] in ("01.png", "02.png") for name in overlays)
    text = out["report_md"].read_text()
    assert "**Synthetic data.**" in text
    assert f"| {test['detector']['rsna_score']:.3f} |" in text
    assert all(f"](../plots/overlays/{name})" in text for name in overlays)  # relative to reports/


def test_without_a_test_split_val_is_the_headline_marked_as_chosen_on(trained, tmp_path):
    """The reference recipe has split.test_size=0: the detector is then scored on val, said to be optimistic."""
    root, rows, _ = trained
    processed = tmp_path / "processed"
    processed.mkdir()
    shutil.copy(root / "processed" / "val.npy", processed / "val.npy")
    write_manifest(processed / "manifest.csv", [r for r in rows if r.split != "test"])
    predictor = _detector_alone(root)
    params = project_params({"evaluate_detection": {"overlays": 0, "bootstrap_resamples": 20}})
    out = {"metrics_json": tmp_path / "metrics.json", "report_json": tmp_path / "detection.json",
           "report_md": tmp_path / "detection.md", "plots_dir": tmp_path / "plots"}
    report = evaluate_detection.run(processed, predictor, params.evaluate_detection, params.localize,
                            DETECT["score_thresholds"], seed=0, **out)
    assert "test" not in report and report["val"]["model_selected_on_this_split"]
    assert json.loads(out["metrics_json"].read_text())["split"] == "val"
    text = out["report_md"].read_text()
    assert "only split scored" in text and "| metric | detector val | CAM val |" in text
    write_manifest(processed / "manifest.csv", [r for r in rows if r.split == "train"])
    with pytest.raises(DatasetError, match="no images in split 'val'"):
        evaluate_detection.run(processed, predictor, params.evaluate_detection, params.localize, DETECT["score_thresholds"],
                       seed=0, **out)
