"""scripts/pr_report.sh and make compare (scripts.noise) in a temporary git repository with commits of
different params and metrics, and the noise judge they share."""

import json
import sys

import pytest
import yaml

from pipeline_repo import ROOT, run
from scripts import noise

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


@pytest.mark.slow  # the real dvc (init, params and metrics diff) in a temporary repository
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
    (auroc,) = [line for line in lines if "| image-level AUROC (the decision predict prints) |" in line]
    assert "0.810" in auroc and "0.900" in auroc and "+0.090" in auroc and "**outside** (0.780–0.840)" in auroc
    assert auroc.startswith("| image-level decision |")  # the group names its first row
    (ap,) = [line for line in lines if "| image-level average precision |" in line]
    assert "within noise (0.650–0.750)" in ap, report
    assert not [line for line in lines if "sensitivity" in line], "unchanged metrics are not listed"
    params = [line for line in lines if line.startswith("| `train.")]
    assert len(params) == 10 and "… and 21 more (`dvc params diff`)" in report, report
    assert "reports/report.md" in report


@pytest.mark.slow  # the real dvc (init, params and metrics diff) in a temporary repository
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


@pytest.mark.slow  # the real dvc (init, params and metrics diff) in a temporary repository
def test_the_seed_spread_widens_the_interval_in_the_pr_report(tmp_path):
    repo = make(tmp_path)
    commit_state(repo, {"lr": 0.0001}, auroc=0.81, ap=0.70, message="base")
    runs = [{"metrics/classifier.json": {"auroc": v, "sens": 0.9}} for v in (0.81, 0.75, 0.87, 0.80, 0.83)]
    (repo / "benchmarks").mkdir()
    (repo / "benchmarks/seed_spread.json").write_text(json.dumps({"spread": noise.spread_summary(runs)}))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "spread"], repo)
    run(["git", "checkout", "-q", "-b", "feature"], repo)
    commit_state(repo, {"lr": 0.0003}, auroc=0.90, ap=0.70, message="higher lr")
    report = run(["bash", str(ROOT / "scripts/pr_report.sh"), "main"], repo).stdout
    (auroc,) = [line for line in report.splitlines() if "| image-level AUROC (the decision predict prints) |" in line]
    assert "within noise" in auroc, report  # outside the bootstrap's 0.78-0.84, inside the seeds' band


@pytest.mark.slow  # the real dvc (init, params and metrics diff) in a temporary repository
def test_make_compare_judges_every_headline_metric_and_fails_outside(tmp_path):
    repo = make(tmp_path)
    commit_state(repo, {"lr": 0.0001}, auroc=0.81, ap=0.70, message="committed run")
    # as `make compare` runs it from a checkout's root, where scripts/ is importable
    compare = lambda: run(["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "scripts.noise"], repo, check=False)  # noqa: E731
    same = compare()
    assert same.returncode == 0 and "Every headline metric is within noise" in same.stdout, same.stdout + same.stderr
    rows = [line for line in same.stdout.splitlines() if line.startswith("| ") and "headline metric" not in line]
    assert len(rows) == 4  # auroc, ap, sens, spec: unchanged ones too, each with a verdict
    assert all("within noise" in line for line in rows)
    headline = json.loads((repo / "metrics/classifier.json").read_text()) | {"auroc": 0.95}
    (repo / "metrics/classifier.json").write_text(json.dumps(headline))  # a fresh run far from the committed one
    moved = compare()
    assert moved.returncode == 1 and "**1 outside noise**: image-level AUROC" in moved.stdout, moved.stdout


def test_spread_bands_and_intervals():
    runs = [{"metrics/dataset.json": {"train": 12}, "metrics/classifier.json": {"auroc": v}} for v in (0.8, 0.9, 0.85)]
    spread = noise.spread_summary(runs)
    auroc = spread["metrics/classifier.json"]["auroc"]
    assert auroc["n"] == 3 and auroc["sd"] == pytest.approx(0.05)
    assert auroc["band95"] == pytest.approx(4.302653 * 0.05 * 2 ** 0.5, rel=1e-5)  # t(0.975, 2)
    assert spread["metrics/dataset.json"]["train"]["band95"] == 0.0
    # the wider of the two, on each side; a zero band leaves the bootstrap alone; neither: None
    assert noise.noise_interval(0.85, {"low": 0.8, "high": 0.95}, {"band95": 0.1}) == (0.75, 0.95)
    assert noise.noise_interval(0.85, {"low": 0.8, "high": 0.9}, {"band95": 0.0}) == (0.8, 0.9)
    assert noise.noise_interval(12, None, {"band95": 0.0}) is None


def test_every_row_gets_a_verdict_in_model_order():
    diff = {
        "metrics/detection.json": {"rsna_score": {"old": 0.7, "new": 0.3}},
        "metrics/dataset.json": {"train": {"old": 12, "new": 13}, "val": {"old": 4, "new": 4}},
        "metrics/classifier.json": {"split": {"old": "test", "new": "test"}, "ece": {"old": None, "new": 0.1}},
    }
    rows = noise.judge(diff, {}, {"metrics/detection.json": {"rsna_score": {"band95": 0.05}}})
    assert [(r.group, r.verdict) for r in rows] == [
        ("data", "changed"), ("data", "same"), ("image-level decision", "new"), ("detector", "outside")]
    assert [r.outside for r in rows] == [True, False, False, True]
