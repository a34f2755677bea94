"""scripts/pr_report.sh in a temporary git repository with two commits of different params and metrics."""

import json

import yaml

from pipeline_repo import ROOT, run

DVC_YAML = {
    "stages": {"train": {"cmd": "true", "params": ["train.lr"], "metrics": [{"metrics/eval.json": {"cache": False}}]}}
}


def commit_state(repo, lr, auroc, message):
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr}}))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/eval.json").write_text(json.dumps({"test": {"auroc": auroc}}))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def test_report_shows_the_changed_metric_and_param(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    commit_state(repo, 0.0001, 0.81, "base")
    run(["git", "checkout", "-q", "-b", "feature"], repo)
    commit_state(repo, 0.0003, 0.9, "higher lr")

    report = run(["bash", str(ROOT / "scripts/pr_report.sh"), "main"], repo).stdout
    metric_rows = [line for line in report.splitlines() if "test.auroc" in line]
    assert len(metric_rows) == 1 and "0.81" in metric_rows[0] and "0.9" in metric_rows[0], report
    param_rows = [line for line in report.splitlines() if "train.lr" in line]
    assert len(param_rows) == 1 and "0.0001" in param_rows[0] and "0.0003" in param_rows[0], report
    assert report.startswith("## Pipeline report against")


def test_unknown_base_is_a_one_line_error(tmp_path):
    run(["git", "init", "-q"], tmp_path)
    result = run(["bash", str(ROOT / "scripts/pr_report.sh"), "no-such-branch"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["pr_report: error: 'no-such-branch' is not a commit here; fetch it first"]
