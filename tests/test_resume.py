"""A training run killed with SIGKILL mid-epoch resumes from its last epoch and ends exactly like an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from pipeline_repo import ROOT
from pneumonia.core import scaling
from pneumonia.classification import train
from project_params import project_params
from tiny_data import prepare
from pneumonia.core.model_file import read_model

PARAMS = project_params(
    {
        "split": {"train_size": 0.6, "test_size": 0},
        "dicom_to_npy": {"image_size": 32, "workers": 1, "grid_images": 2},
        "train": {"max_epochs": 3, "batch_size": 8, "grid_images": 2, "accelerator": "cpu"},
    }
)

# The train stage's code in a process that SIGKILLs itself in the middle of the second epoch.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import yaml
from pneumonia.classification import train
from project_params import project_params

class KillMidEpoch(train.SeedEachEpoch):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)

train.SeedEachEpoch = KillMidEpoch
root, out = Path(sys.argv[1]), Path(sys.argv[2])
params = project_params(yaml.safe_load(sys.argv[3]))
train.run(root / "processed", root / "dataset.json", params.train, seed=11,
          model_path=out / "model.safetensors", live_dir=out / "dvclive")
"""


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("data"), PARAMS, patients=30, size=128, seed=5)


def run_train(root, out):
    return train.run(root / "processed", root / "dataset.json", PARAMS.train, seed=11,
                     model_path=out / "model.safetensors", live_dir=out / "dvclive")


def live_files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted((out / "dvclive").rglob("*")) if p.is_file()}


def weights(out):
    header, tensors = read_model(out / "model.safetensors", "classifier", "retrain")
    return tensors, header


def test_sigkill_mid_epoch_then_rerun_resumes_and_matches_an_uninterrupted_run(processed, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    expected = run_train(processed, uninterrupted)

    out = tmp_path / "killed"
    params_yaml = json.dumps({"train": {"max_epochs": 3, "batch_size": 8, "grid_images": 2, "accelerator": "cpu"}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(processed), str(out), params_yaml],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "model.safetensors").exists()
    resume_point = torch.load(out / ".model-checkpoints" / scaling.RESUME, weights_only=True)
    assert resume_point["epoch"] == 0  # the first epoch finished; the second was killed

    result = run_train(processed, out)

    assert result == expected  # the last epoch's loss and val metrics, and the best val/auroc
    assert not (out / ".model-checkpoints").exists()
    (state, hparams), (expected_state, expected_hparams) = weights(out), weights(uninterrupted)
    assert state.keys() == expected_state.keys()
    for key in state:
        assert torch.equal(state[key], expected_state[key]), key
    assert hparams == expected_hparams  # temperature included
    assert live_files(out) == live_files(uninterrupted)  # the curves too: no duplicated or missing rows


def test_a_checkpoint_of_other_params_is_not_resumed(processed, tmp_path):
    out = tmp_path / "run"
    ckpt_dir = out / ".model-checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / scaling.RESUME).write_bytes(b"left over from another run")
    (ckpt_dir / scaling.FINGERPRINT).write_text(json.dumps({"params": {"max_epochs": 99}}))
    run_train(processed, out)  # starts afresh instead of failing or resuming
    assert (out / "model.safetensors").exists() and not ckpt_dir.exists()
