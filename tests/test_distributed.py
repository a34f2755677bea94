"""The real train stage under Lightning DDP: two CPU processes on gloo, in a temporary repository."""

import json

import numpy as np
import pytest

from pneumonia.evaluation.bootstrap import auroc
from pneumonia.classification.classifier import load_classifier
from pneumonia.classification.inference import predict_logits
from pneumonia.data.manifest import read_manifest, split_rows

from pipeline_repo import TINY_PARAMS, make_repo, run

pytestmark = pytest.mark.slow


def test_ddp_on_two_cpu_processes_trains_once_and_agrees_with_one_process(tmp_path):
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "max_epochs": 1, "accelerator": "cpu", "devices": 2,
                                                "strategy": "ddp"}}
    repo = make_repo(tmp_path / "repo", params)
    out = run(["dvc", "repro", "train"], repo).stdout

    assert out.count("best val/auroc") == 2, "both ranks should have run the stage"
    models = sorted(p.name for p in (repo / "models").iterdir() if p.name != ".gitignore")
    assert models == ["classifier.safetensors"], f"one checkpoint, no leftovers: {models}"
    auroc_rows = (repo / "dvclive/plots/metrics/val/auroc.tsv").read_text().strip().splitlines()
    assert len(auroc_rows) == 2, "DVCLive wrote its curve once (header + one epoch), not once per rank"

    # val/auroc synchronised across the ranks equals one process's AUROC of the exported model on val
    logged = json.loads((repo / "dvclive/metrics.json").read_text())["val"]["auroc"]
    labels = np.array([r.label for r in split_rows(read_manifest(repo / "data/processed"), "val")])
    logits = predict_logits(load_classifier(repo / "models/classifier.safetensors"),
                            np.load(repo / "data/processed/val.npy"), batch_size=16)
    assert auroc(labels, logits) == pytest.approx(logged, abs=1e-6)
