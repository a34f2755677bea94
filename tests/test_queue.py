"""A queued sweep with `dvc exp run --queue` and `dvc queue start`, on tiny params in a temporary repository."""

import json
import time

import pytest

from pipeline_repo import baseline_repo, run, session_folder

pytestmark = pytest.mark.slow


def experiments_with_metrics(node, inside=False):
    """(train.lr, test AUROC) of each experiment (not the baseline) in `dvc exp show --json`."""
    found = []
    if isinstance(node, dict):
        data = node.get("data") if isinstance(node.get("data"), dict) else None
        if inside and data and data.get("metrics", {}).get("metrics/classifier.json"):
            lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
            found.append((lr, data["metrics"]["metrics/classifier.json"]["data"]["auroc"]))
        for key, value in node.items():
            found += experiments_with_metrics(value, inside or key == "experiments")
    elif isinstance(node, list):
        for value in node:
            found += experiments_with_metrics(value, inside)
    return found


def test_queued_sweep_runs_both_experiments(tmp_path, tmp_path_factory):
    repo = baseline_repo(tmp_path / "repo", session_folder(tmp_path_factory))
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=1e-4,3e-4"], repo)
    run(["dvc", "queue", "start"], repo)
    deadline = time.time() + 300
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status

    shown = json.loads(run(["dvc", "exp", "show", "--json", "--sort-by", "metrics/classifier.json:auroc"], repo).stdout)
    experiments = experiments_with_metrics(shown)
    assert sorted(lr for lr, _ in experiments) == [0.0001, 0.0003], experiments
    assert all(0 <= auroc <= 1 for _, auroc in experiments)
