"""scripts/pr_report.sh in a temporary git repository with two commits of different params and metrics."""

import json

import yaml

from pipeline_repo import ROOT, run

DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": "true",
            "params": ["train"],
            "outs": [{"reports/classification.json": {"cache": False}}],
            "metrics": [{"metrics/classifier.json": {"cache": False}}],
        }
    }
}


def commit_state(repo, train, auroc, ap, message):
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    for folder in ("metrics", "reports"):
        (repo / folder).mkdir(exist_ok=True)
    ci = {"auroc": {"low": auroc - 0.03, "high": auroc + 0.03}, "average_precision": {"low": ap - 0.05, "high": ap + 0.05}}
    point = {"ci95": {"sensitivity": {"low": 0.8, "high": 0.95}, "specificity": {"low": 0.7, "high": 0.8}}}
    report = {"headline_split": "test", "headline_operating_point": "sensitivity_0p90",
              "test": {"ci95": ci, "operating_points": {"sensitivity_0p90": point}}}
    (repo / "reports/classification.json").write_text(json.dumps(report))
    headline = {"split": "test", "auroc": auroc, "ap": ap, "sens": 0.9, "spec": 0.75}
    (repo / "metrics/classifier.json").write_text(json.dumps(headline))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def make(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    return repo


def test_report_marks_changes_against_the_base_interval_and_stays_short(tmp_path):
    repo = make(tmp_path)
    commit_state(repo, {"lr": 0.0001}, auroc=0.81, ap=0.70, message="base")
    run(["git", "checkout", "-q", "-b", "feature"], repo)
    commit_state(repo, {"lr": 0.0003}, auroc=0.81, ap=0.70, message="only lr")
    (lr,) = [line for line in run(["bash", str(ROOT / "scripts/pr_report.sh"), "main"], repo).stdout.splitlines()
             if "`train.lr`" in line]
    assert "0.0001" in lr and "0.0003" in lr
    # AUROC moves far outside the base's interval, AP only by resampling noise; 30 params change
    many = {"lr": 0.0003, **{f"knob{i:02d}": i for i in range(30)}}
    commit_state(repo, many, auroc=0.90, ap=0.72, message="higher lr")

    report = run(["bash", str(ROOT / "scripts/pr_report.sh"), "main"], repo).stdout
    lines = report.splitlines()
    assert report.startswith("## Pipeline report against") and len(lines) <= 40, report
    (auroc,) = [line for line in lines if line.startswith("| image-level AUROC (the decision predict prints) |")]
    assert "0.810" in auroc and "0.900" in auroc and "+0.090" in auroc and "**outside** base 95 % CI 0.780–0.840" in auroc
    (ap,) = [line for line in lines if line.startswith("| image-level average precision |")]
    assert "within noise (base 95 % CI 0.650–0.750)" in ap, report
    assert not [line for line in lines if "sensitivity" in line], "unchanged metrics are not listed"
    params = [line for line in lines if line.startswith("| `train.")]
    assert len(params) == 10 and "… and 21 more (`dvc params diff`)" in report, report
    assert "reports/report.md" in report


def test_no_change_says_so(tmp_path):
    repo = make(tmp_path)
    commit_state(repo, {"lr": 0.0001}, auroc=0.81, ap=0.70, message="base")
    report = run(["bash", str(ROOT / "scripts/pr_report.sh"), "main"], repo).stdout
    assert "No headline metric changed." in report and "No param changed." in report


def test_unknown_base_is_a_one_line_error(tmp_path):
    run(["git", "init", "-q"], tmp_path)
    result = run(["bash", str(ROOT / "scripts/pr_report.sh"), "no-such-branch"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["pr_report: error: 'no-such-branch' is not a commit here; fetch it first"]
