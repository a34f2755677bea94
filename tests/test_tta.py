"""The detector's flip test-time augmentation: mirroring, the NMS and WBF merges, the choice on val, the model
file, and the detect stage choosing it (the ONNX backend's agreement is in test_onnx.py, beside its export)."""

import json
import math

import numpy as np
import pytest
import torch

from pneumonia.classification.data import as_batch, standardize
from pneumonia.detection import detect
from pneumonia.detection.decode import ImageBoxes, decode
from pneumonia.detection.detector import LoadedDetector, detect_images, load_detector, save_detector, to_original
from pneumonia.detection.network import RawDetections, build_detector
from pneumonia.detection.thresholds import ThresholdRule, rsna_at
from pneumonia.detection.tta import (
    FlipMerge, choose_flip, merge_views, merged_boxes, mirror_boxes, mirror_images, unmirror,
)
from pneumonia.core.errors import PneumoniaError
from pneumonia.data.manifest import ManifestRow, write_manifest
from pneumonia.core.model_file import read_model, save_model
from project_params import project_params


def _boxes(boxes, scores, logit=0.0):
    logit = float(logit)
    return ImageBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores, dtype=torch.float32),
                      1 / (1 + math.exp(-logit)), logit)


def test_a_box_on_the_mirror_maps_back_onto_the_image_exactly():
    image = torch.zeros(1, 1, 64, 64)
    image[..., 10:30, 5:17] = 1.0  # rows 10-29, columns 5-16: the box (5, 10, 17, 30)
    mirrored = mirror_images(image)
    rows, cols = torch.nonzero(mirrored[0, 0], as_tuple=True)
    on_mirror = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
    assert on_mirror.tolist() == mirror_boxes(torch.tensor([[5.0, 10.0, 17.0, 30.0]]), 64).tolist() == [[47, 10, 59, 30]]
    assert mirror_boxes(on_mirror, 64).tolist() == [[5, 10, 17, 30]]


def test_the_mirrored_heads_decode_to_the_same_boxes():
    # A peak at cell (row 2, col 1) of an 8 x 8 grid with distances (left 3, top 4, right 9, bottom 5); on the
    # mirror it sits at col 6 with left and right swapped: the grid is symmetric, so the boxes agree exactly.
    heat = torch.full((1, 1, 8, 8), -8.0)
    heat[0, 0, 2, 1] = 2.0
    distances = torch.tensor([3.0, 4.0, 9.0, 5.0]).view(1, 4, 1, 1).expand(1, 4, 8, 8).clone()
    raw = RawDetections(heat, distances, torch.tensor([0.5]))
    flipped = RawDetections(heat.flip(-1), distances[:, [2, 1, 0, 3]].flip(-1), torch.tensor([0.5]))
    plain, mirrored = decode(raw, 64, 4, 0.5)[0], unmirror(decode(flipped, 64, 4, 0.5), 64)[0]
    assert plain.boxes.tolist() == mirrored.boxes.tolist() == [[9, 16, 21, 25]]  # centre (12, 20)
    assert merged_boxes(raw, flipped, FlipMerge("wbf", 0.5), 64, 4, 0.5)[0].boxes.tolist() == [[9, 16, 21, 25]]


def test_nms_keeps_the_union_minus_overlaps_most_confident_first():
    plain = _boxes([(10, 10, 50, 50), (60, 60, 90, 90)], [0.9, 0.3], logit=1.0)
    mirrored = _boxes([(12, 10, 50, 52), (0, 60, 20, 90)], [0.8, 0.5], logit=3.0)
    merged = merge_views(plain, mirrored, FlipMerge("nms", 0.5), 100, max_boxes=4)
    assert merged.boxes.tolist() == [[10, 10, 50, 50], [0, 60, 20, 90], [60, 60, 90, 90]]
    assert merged.scores.tolist() == pytest.approx([0.9, 0.5, 0.3])
    assert merged.image_logit == 2.0 and merged.image_probability == pytest.approx(1 / (1 + math.exp(-2)))
    assert len(merge_views(plain, mirrored, FlipMerge("nms", 0.5), 100, max_boxes=2).boxes) == 2


def test_wbf_averages_a_cluster_weighted_by_score_and_halves_a_lone_box():
    plain = _boxes([(10, 10, 50, 50)], [0.9])
    mirrored = _boxes([(20, 10, 50, 60), (70, 70, 90, 90)], [0.6, 0.4])
    merged = merge_views(plain, mirrored, FlipMerge("wbf", 0.5), 100, max_boxes=4)
    # x0 = (10 * 0.9 + 20 * 0.6) / 1.5 = 14; y1 = (50 * 0.9 + 60 * 0.6) / 1.5 = 54; score = mean(0.9, 0.6)
    np.testing.assert_allclose(merged.boxes.numpy(), [[14, 10, 50, 54], [70, 70, 90, 90]], atol=1e-4)
    assert merged.scores.tolist() == pytest.approx([0.75, 0.2])  # the lone box: seen by one view of two
    # at a higher IoU the two (IoU 0.6) stay apart
    assert len(merge_views(plain, mirrored, FlipMerge("wbf", 0.7), 100, max_boxes=4).boxes) == 3
    empty = merge_views(_boxes([], []), _boxes([], []), FlipMerge("wbf", 0.5), 100, max_boxes=4)
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)


SIZES = [(200, 200)] * 3  # original pixels: twice the 100-pixel model input
IOUS = (0.6, 0.4, 0.5)  # any order: tried from the lowest


def _choose(plain, mirrored, truth, candidates=(0.1, 0.3)):
    return choose_flip(plain, mirrored, SIZES, 100, 4, truth, ThresholdRule(tuple(candidates)), IOUS)


def test_the_flip_is_chosen_when_the_mirror_finds_what_the_image_missed():
    truth = [[(20, 20, 80, 80)], [(100, 100, 60, 60)], []]  # original pixels (x, y, w, h)
    plain = [_boxes([(10, 10, 50, 50)], [0.9], 3), _boxes([], [], 3), _boxes([], [], 3)]
    mirrored = [_boxes([(10, 10, 50, 50)], [0.9], 3), _boxes([(50, 50, 80, 80)], [0.8], 3), _boxes([], [], 3)]
    choice = _choose(plain, mirrored, truth)
    # NMS and WBF both find the missed box at every IoU (score 1 against 0.5): ties go to NMS, then to 0.4
    assert choice.merge == FlipMerge("nms", 0.4) and choice.rsna_score == 1.0
    assert [(g["tta"], g["merge_iou"]) for g in choice.grid] == [
        ("none", None), ("nms", 0.4), ("nms", 0.5), ("nms", 0.6), ("wbf", 0.4), ("wbf", 0.5), ("wbf", 0.6)]
    assert choice.grid[0]["rsna_score"] == 0.5 and all(g["rsna_score"] == 1.0 for g in choice.grid[1:])


def test_no_flip_is_chosen_when_the_mirror_only_adds_false_boxes():
    truth = [[(20, 20, 80, 80)], [], []]
    plain = [_boxes([(10, 10, 50, 50)], [0.9], 3), _boxes([], [], 3), _boxes([], [], 3)]
    mirrored = [_boxes([(10, 10, 50, 50)], [0.9], 3), _boxes([], [], 3), _boxes([(60, 60, 90, 90)], [0.95], 3)]
    choice = _choose(plain, mirrored, truth)
    # the false box (0.95 by NMS, 0.475 by WBF) passes every box threshold the true one (0.9) does
    assert choice.merge is None and choice.rsna_score == 1.0
    assert [g["rsna_score"] for g in choice.grid] == [1.0] + [0.5] * 6
    # where a threshold drops WBF's halved false box, WBF ties with no flip: ties go to no flip
    assert _choose(plain, mirrored, truth, candidates=(0.1, 0.5)).merge is None


def _detector(tta=None, size=64):
    torch.manual_seed(0)
    return LoadedDetector(build_detector("resnet18", 8).eval(), "resnet18", 8, image_size=size, mean=0.4, std=0.3,
                          image_threshold=0.0, box_threshold=0.002, nms_iou=0.5, max_boxes=3, tta=tta)


def test_a_model_file_keeps_the_flip_and_detects_with_it(tmp_path):
    plain, flipped = _detector(), _detector(FlipMerge("wbf", 0.55))
    assert "tta" not in plain.header()  # no TTA: the header as before
    save_detector(tmp_path / "d.safetensors", flipped.network, flipped)
    loaded = load_detector(tmp_path / "d.safetensors")
    assert loaded.tta == FlipMerge("wbf", 0.55)
    images = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64), dtype=np.uint8)
    sizes = [(128, 128), (256, 200), (64, 64)]
    found = detect_images(loaded, images, sizes, batch_size=2)
    batch = standardize(as_batch(images), loaded.mean, loaded.std)
    with torch.inference_mode():
        by_hand = to_original(merged_boxes(loaded.network(batch), loaded.network(torch.flip(batch, dims=[-1])),
                                           loaded.tta, 64, 3, 0.5), sizes, 64)
    assert all(len(d.boxes) for d in found)
    for ours, theirs in zip(found, by_hand, strict=True):
        # within float noise: batches of 2 and of 3 may take different kernels
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-3)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
        assert ours.image_logit == pytest.approx(theirs.image_logit, abs=1e-5)
    alone = detect_images(_detector(), images, sizes, 2)
    assert all(a.image_logit != b.image_logit for a, b in zip(found, alone))  # the mirror's logit averaged in


@pytest.mark.parametrize("tta", [None, "hflip", {"method": "soft-nms", "iou": 0.5}, {"method": "nms", "iou": 1.5},
                                 {"method": "nms", "iou": True}, {"method": "nms", "iou": 0.5, "sigma": 1}])
def test_the_header_flip_is_read_or_refused_in_one_line(tta, tmp_path):
    detector = _detector()
    path = tmp_path / "d.safetensors"
    save_model(path, "detector", detector.network.state_dict(), detector.header() | {"tta": tta})
    if tta is None:  # written as null: no TTA, as without the key
        assert load_detector(path).tta is None
        return
    with pytest.raises(PneumoniaError) as error:
        load_detector(path)
    assert str(error.value).startswith(f"{path}: header tta") and "\n" not in str(error.value)


def test_the_detect_stage_chooses_the_flip_on_val_and_records_it(tmp_path):
    rng = np.random.default_rng(2)
    rows, processed = [], tmp_path / "processed"
    processed.mkdir()
    for split, n in (("train", 12), ("val", 9)):
        images = rng.integers(0, 60, size=(n, 32, 32)).astype(np.uint8)
        boxes = [[(8.0 * (i % 3), 8.0, 40.0, 48.0)] if i % 3 else [] for i in range(n)]  # original: 128 px
        for i, b in enumerate(boxes):
            if b:
                x, y, w, h = (int(v / 4) for v in b[0])
                images[i, y : y + h, x : x + w] = 220
        np.save(processed / f"{split}.npy", images)
        rows += [ManifestRow(patient_id=f"{split}{i}", split=split, row=i, label=int(bool(b)), boxes=tuple(b),
                             detailed_class="", view="PA", sex="F", age=50, rows=128, columns=128,
                             pixel_spacing_mm=None) for i, b in enumerate(boxes)]
    write_manifest(processed / "manifest.csv", rows)
    (tmp_path / "dataset.json").write_text(json.dumps({"mean": 0.2, "std": 0.3}))
    params = project_params({"detect": {
        "width": 8, "image_size": 32, "max_epochs": 1, "batch_size": 8, "num_workers": 0, "accelerator": "cpu",
        "precision": "32-true", "augment": False, "score_thresholds": [0.005, 0.01, 0.3], "tta": "hflip",
        "tta_merge_ious": [0.5]}}).detect
    chosen = detect.run(processed, tmp_path / "dataset.json", params, seed=0, model_path=tmp_path / "d.safetensors",
                          history_json=None)
    assert [(g["tta"], g["merge_iou"]) for g in chosen["tta_grid"]] == [("none", None), ("nms", 0.5), ("wbf", 0.5)]
    best = max(chosen["tta_grid"], key=lambda g: g["rsna_score"])
    assert chosen["val_rsna_score"] == best["rsna_score"]
    header = read_model(tmp_path / "d.safetensors", "detector", "")[0]
    assert header.get("tta") == chosen["tta"] and header["val_rsna_score"] == chosen["val_rsna_score"]
    detector = load_detector(tmp_path / "d.safetensors")
    val = [r for r in rows if r.split == "val"]
    found = detect_images(detector, np.load(processed / "val.npy"), [(r.rows, r.columns) for r in val], 4)
    # the model file gives back the score the stage chose with: the same merge at the same thresholds
    assert rsna_at(found, [r.boxes for r in val], detector.image_threshold, detector.box_threshold) == pytest.approx(
        chosen["val_rsna_score"])
