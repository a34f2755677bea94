"""The real `dvc repro` and `dvc exp run` on tiny params in a temporary git repository."""

import json

import numpy as np
import pytest
import yaml

from pipeline_repo import commit, make_repo, run

pytestmark = pytest.mark.slow


def declared_outs(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                yield next(iter(out)) if isinstance(out, dict) else out


def test_repro_then_experiment(tmp_path):
    repo = make_repo(tmp_path / "repo")
    run(["dvc", "repro"], repo)

    for out in declared_outs(repo):
        assert (repo / out).exists(), f"{out} declared in dvc.yaml but not written"
    processed = repo / "data/processed"
    manifest = (processed / "manifest.csv").read_text().splitlines()
    train, val = np.load(processed / "train.npy"), np.load(processed / "val.npy")
    assert train.shape == (28, 32, 32) and val.shape == (12, 32, 32) and train.dtype == np.uint8
    assert len(manifest) == 1 + 40

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert 0 <= metrics["metrics/eval.json"]["data"]["val"]["auroc"] <= 1
    assert metrics["metrics/dataset.json"]["data"]["counts"]["train"]["total"] == 28
    assert metrics["dvclive/metrics.json"]["data"]["train"]["loss"] > 0
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout

    commit(repo, "baseline run")
    experiment = run(["dvc", "exp", "run", "-S", "train.lr=0.003"], repo).stdout
    assert "Running stage 'train'" in experiment and "Running stage 'evaluate'" in experiment
    for upstream in ("download", "dicom_to_npy", "compute_stats"):
        assert f"Running stage '{upstream}'" not in experiment

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "dvclive/metrics.json" in diff and diff["dvclive/metrics.json"]["train.loss"]["diff"] != 0
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    lr = params_diff["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.0001, 0.003)
