"""The real `dvc repro`, killed with SIGKILL mid-stage and run again: the same bytes as an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from pipeline_repo import TINY_PARAMS, baseline_repo, run, session_folder

pytestmark = pytest.mark.slow

# Runs a stage script after arranging for the whole `dvc repro` process group to be
# SIGKILLed part-way: after a few converted DICOMs, or in the second epoch's second batch.
KILLER = """
import os, runpy, signal, sys
stage = sys.argv[1]
if stage == "dicom_to_npy":
    from pneumonia.data import dicom_to_npy
    read_image, calls = dicom_to_npy.read_image_sizes, [0]
    def read_then_die(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:
            os.killpg(0, signal.SIGKILL)
        return read_image(*args, **kwargs)
    dicom_to_npy.read_image_sizes = read_then_die
else:
    from pneumonia.classification import train
    class KillMidEpoch(train.SeedEachEpoch):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                os.killpg(0, signal.SIGKILL)
    train.SeedEachEpoch = KillMidEpoch
runpy.run_path(f"stages/{stage}.py", run_name="__main__")
"""


def snapshot(repo):
    """Every small output git tracks (metrics, plots, curves) and dvc.lock, which hashes the cached ones."""
    files = [repo / "dvc.lock", *(repo / "metrics").rglob("*"), *(repo / "plots").rglob("*"), *(repo / "dvclive").rglob("*")]
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(files) if p.is_file()}


def repro_killed_in(repo, stage):
    """`dvc repro --force` with ``stage`` killing everything part-way; dvc.yaml is restored afterwards."""
    dvc_yaml = (repo / "dvc.yaml").read_text()
    pipeline = yaml.safe_load(dvc_yaml)
    (repo / "killer.py").write_text(KILLER)
    pipeline["stages"][stage]["cmd"] = f"python killer.py {stage}"
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    try:
        killed = subprocess.run(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=600, start_new_session=True)
    finally:
        (repo / "dvc.yaml").write_text(dvc_yaml)
        (repo / "killer.py").unlink()
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr


def test_repro_is_byte_identical_and_survives_sigkill(tmp_path, tmp_path_factory):
    assert TINY_PARAMS["train"]["max_epochs"] == 2  # the kill comes in the second epoch
    # The pipeline as run once in another folder; that a second full run gives the same bytes is
    # test_clone.py's check (`dvc repro --force` in a clone leaves `git status` clean).
    repo = baseline_repo(tmp_path / "repo", session_folder(tmp_path_factory))
    first = snapshot(repo)
    assert any(name.startswith("dvclive/plots") for name in first)

    # Conversion killed after a few files: nothing half-written is taken for a result.
    repro_killed_in(repo, "dicom_to_npy")
    assert not (repo / "data" / "processed").exists()  # DVC removed the old output; none was published
    assert "dicom_to_npy" in run(["dvc", "status"], repo).stdout
    out = run(["dvc", "repro"], repo).stdout
    assert "Running stage 'dicom_to_npy'" in out
    assert not list((repo / "data").glob(".processed.tmp-*")), "the killed run's leftovers are gone"
    assert snapshot(repo) == first

    # Training killed in its second epoch: the rerun resumes from the first and ends the same.
    repro_killed_in(repo, "train")
    assert (repo / "models" / ".classifier-checkpoints" / "resume.ckpt").exists()
    out = run(["dvc", "repro"], repo).stdout
    assert "resuming from models/.classifier-checkpoints/resume.ckpt (epochs done: 1 of 2)" in out
    assert not (repo / "models" / ".classifier-checkpoints").exists()
    assert snapshot(repo) == first
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
