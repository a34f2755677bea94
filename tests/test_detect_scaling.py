"""The detect stage scales and resumes as the train stage: DDP on two CPU processes chooses its thresholds on
the whole val split, and a run killed with SIGKILL mid-epoch resumes and ends like an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline_repo import ROOT
from pneumonia.core import scaling
from pneumonia.detection import detect
from pneumonia.detection.detector import detect_images, load_detector
from pneumonia.detection.thresholds import choose_box_thresholds, target_prevalence
from pneumonia.detection.batch_augment import augment_batch, batch_box_augmentation, pad_boxes
from pneumonia.data.manifest import read_manifest, split_rows, write_manifest
from project_params import project_params
from box_data import rectangles, square_rows

DETECT = {
    "arch": "resnet18", "width": 8, "image_size": 32, "max_epochs": 3, "lr": 0.003, "weight_decay": 0.0,
    "batch_size": 8, "negative_ratio": 0.5, "num_workers": 0, "accelerator": "cpu", "precision": "32-true",
    "augment": True, "score_thresholds": [0.1, 0.3, 0.5], "nms_iou": 0.3, "max_boxes": 2,
}

# The stage's code in a script file (DDP starts the other ranks by running it again), optionally
# SIGKILLing itself in the middle of the second epoch. Each rank writes the epoch it chose.
SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from pytorch_lightning.utilities import rank_zero_only
from pneumonia.detection import detect
from project_params import project_params

root, out, settings, kill = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "kill"
if kill:
    def die(module, batch, batch_idx):
        if module.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    detect.DetectorModule.on_train_batch_start = die
chosen = detect.run(root / "processed", root / "dataset.json", project_params({"detect": settings}).detect, seed=3,
                    model_path=out / "detector.safetensors", history_json=out / "epochs.json")
(out / f"chosen-{rank_zero_only.rank}.json").write_text(json.dumps(chosen))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 px rectangles: 24 train images, 11 val (odd: DDP's sampler pads val with a repeated image)."""
    root = tmp_path_factory.mktemp("boxes")
    (root / "processed").mkdir()
    rng = np.random.default_rng(2)
    rows = []
    for split, n in (("train", 24), ("val", 11)):
        images, boxes = rectangles(n, 32, 256, rng)
        np.save(root / "processed" / f"{split}.npy", images)
        rows += square_rows(images, boxes, split, 256)
    write_manifest(root / "processed" / "manifest.csv", rows)
    (root / "dataset.json").write_text(json.dumps({"mean": 0.2, "std": 0.3}))
    (root / "stage.py").write_text(SCRIPT)
    return root


def run_stage(data, out, settings, kill=False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, str(data / "stage.py"), str(data), str(out), json.dumps(settings),
                           "kill" if kill else "run"], env=env, capture_output=True, text=True, timeout=600)


def run_here(data, out):
    return detect.run(data / "processed", data / "dataset.json", project_params({"detect": DETECT}).detect, seed=3,
                      model_path=out / "detector.safetensors", history_json=out / "epochs.json")


@pytest.mark.slow  # two processes starting Lightning: minutes on a busy machine
def test_ddp_on_two_cpu_processes_chooses_thresholds_on_the_whole_val_split(data, tmp_path):
    out = tmp_path / "ddp"
    done = run_stage(data, out, {**DETECT, "strategy": "ddp", "devices": 2, "augment": False})
    assert done.returncode == 0, done.stderr[-3000:]

    chosen = [json.loads((out / f"chosen-{rank}.json").read_text()) for rank in (0, 1)]
    assert chosen[0] == chosen[1], "every rank chose on the same gathered val split"
    history = json.loads((out / "epochs.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] and chosen[0] in history
    assert sorted(p.name for p in out.iterdir()) == ["chosen-0.json", "chosen-1.json", "detector.safetensors",
                                                      "epochs.json"], "one model file, no checkpoint folder"

    # One process decoding all of val with the exported model chooses the same thresholds and score.
    params = project_params({"detect": DETECT}).detect
    rows = split_rows(read_manifest(data / "processed"), "val")
    detector = load_detector(out / "detector.safetensors")
    found = detect_images(detector, np.load(data / "processed" / "val.npy"), [(r.rows, r.columns) for r in rows], 4)
    prevalence = target_prevalence(params.threshold_prevalence, split_rows(read_manifest(data / "processed"), "train"))
    choice = choose_box_thresholds(found, [r.boxes for r in rows], params.score_thresholds, prevalence=prevalence)
    assert (choice.image_threshold, choice.box_threshold) == (chosen[0]["image_threshold"],
                                                              chosen[0]["box_threshold"])
    assert choice.rsna_score == pytest.approx(chosen[0]["val_rsna_score"], abs=1e-6)


def test_sigkill_mid_epoch_then_rerun_resumes_and_matches_an_uninterrupted_run(data, tmp_path, capsys):
    uninterrupted = tmp_path / "uninterrupted"
    # A checkpoint of other params is not resumed: the run starts afresh and removes it.
    stale = uninterrupted / ".detector-checkpoints"
    stale.mkdir(parents=True)
    (stale / scaling.RESUME).write_bytes(b"left over from another run")
    (stale / scaling.FINGERPRINT).write_text(json.dumps({"params": {"max_epochs": 99}}))
    expected = run_here(data, uninterrupted)
    assert "resuming" not in capsys.readouterr().out and not stale.exists()

    out = tmp_path / "killed"
    killed = run_stage(data, out, DETECT, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "detector.safetensors").exists() and (out / ".detector-checkpoints" / scaling.RESUME).exists()

    assert run_here(data, out) == expected
    assert "detect: resuming from" in capsys.readouterr().out
    assert not (out / ".detector-checkpoints").exists()
    assert (out / "epochs.json").read_text() == (uninterrupted / "epochs.json").read_text()
    assert (out / "detector.safetensors").read_bytes() == (uninterrupted / "detector.safetensors").read_bytes()


def _bright_extent(image: torch.Tensor) -> list[float]:
    """The extent (x0, y0, x1, y1) of the bright pixels of a 1 x S x S image."""
    rows, cols = torch.nonzero(image[0] > image.mean() + 1.0, as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_the_batch_augmentation_moves_each_box_with_its_image():
    size, rng = 64, np.random.default_rng(0)
    images = torch.full((40, 1, size, size), -0.6)
    boxes = []
    for i in range(len(images)):
        x, y = (int(v) for v in rng.integers(12, 32, size=2))
        images[i, 0, y : y + 20, x : x + 16] = 2.0
        boxes.append(torch.tensor([[x, y, x + 16, y + 20]], dtype=torch.float32) if i % 5 else torch.zeros(0, 4))
    padded, counts = pad_boxes(boxes)
    torch.manual_seed(0)
    warped, moved = augment_batch(batch_box_augmentation(size), images, padded, counts)
    assert warped.shape == images.shape
    shifted = 0
    for i in range(len(images)):
        if i % 5 == 0:
            assert len(moved[i]) == 0  # padding never becomes a box
            continue
        assert moved[i].shape == (1, 4)
        # The bright rectangle's extent and the moved box agree within the resampling blur.
        assert moved[i][0].tolist() == pytest.approx(_bright_extent(warped[i]), abs=2.5)
        shifted += moved[i][0].tolist() != pytest.approx(boxes[i][0].tolist(), abs=1.0)
    assert shifted >= 24, "each image got its own draw"


def test_the_stage_trains_with_the_augmentation_on_the_device(data, tmp_path):
    """augment_on device on the CPU: the loader only reads, the module warps and encodes whole batches."""
    params = project_params({"detect": {**DETECT, "augment_on": "device", "max_epochs": 2}}).detect
    module_batches = []
    original = detect.DetectorModule.training_step

    def spy(module, batch, batch_idx):
        module_batches.append([t.shape for t in batch])
        return original(module, batch, batch_idx)

    detect.DetectorModule.training_step = spy
    try:
        chosen = detect.run(data / "processed", data / "dataset.json", params, seed=3,
                              model_path=tmp_path / "detector.safetensors", history_json=tmp_path / "epochs.json")
    finally:
        detect.DetectorModule.training_step = original
    assert chosen["epoch"] in (0, 1) and (tmp_path / "detector.safetensors").exists()
    images, heatmap, box_target, box_weight, labels = module_batches[0]
    assert images[1:] == (1, 32, 32) and heatmap[1:] == (1, 4, 4) and box_target[1:] == (4, 4, 4)
