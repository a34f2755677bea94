"""The real `dvc repro` and `dvc exp run` on tiny params in a temporary git repository."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_repo import BASELINE_LOG, baseline_repo, run, session_folder

pytestmark = pytest.mark.slow


def declared_outs(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                yield next(iter(out)) if isinstance(out, dict) else out


@pytest.fixture
def repo(tmp_path, tmp_path_factory):
    """The tiny pipeline after its `dvc repro`, committed: run once per session, copied for each test."""
    return baseline_repo(tmp_path / "repo", session_folder(tmp_path_factory))


def test_repro_then_experiment(repo):
    log = (repo / BASELINE_LOG).read_text()
    noise = [line for line in log.splitlines() if "litlogger" in line or "deprecated" in line]
    assert not noise, noise

    for out in declared_outs(repo):
        assert (repo / out).exists(), f"{out} declared in dvc.yaml but not written"
    processed = repo / "data/processed"
    manifest = (processed / "manifest.csv").read_text().splitlines()
    shapes = {split: np.load(processed / f"{split}.npy").shape for split in ("train", "val", "test")}
    assert shapes == {"train": (24, 32, 32), "val": (12, 32, 32), "test": (12, 32, 32)}
    assert len(manifest) == 1 + 48

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert set(metrics) == {"metrics/dataset.json", "metrics/classifier.json", "metrics/cam.json", "metrics/detection.json"}
    headline = metrics["metrics/classifier.json"]["data"]
    assert headline["split"] == "test" and headline["auroc_low"] <= headline["auroc"] <= headline["auroc_high"]
    assert metrics["metrics/dataset.json"]["data"] == {"train": 24, "val": 12, "test": 12}
    leaves = sum(len(m["data"]) for m in metrics.values())
    assert leaves <= 25, f"{leaves} headline metrics: the detail belongs in reports/"
    evaluation = json.loads((repo / "reports/classification.json").read_text())
    assert evaluation["val"]["model_selected_on_this_split"] and not evaluation["test"]["model_selected_on_this_split"]
    assert set(evaluation["test"]["operating_points"]) == {"0p50", "0p25", "sensitivity_0p90", "youden"}
    report = (repo / "reports/report.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (repo / "reports" / image).is_file(), image
    assert f"| AUROC | {evaluation['test']['auroc']:.3f} |" in report
    detection = json.loads((repo / "metrics/detection.json").read_text())  # `dvc metrics show` drops nulls
    assert set(detection) == {"split", "rsna_score", "ap50", "auroc", "size_spearman", "area_mae"}
    assert detection["split"] == "test" and 0 <= detection["rsna_score"] <= 1 and 0 <= detection["ap50"] <= 1
    report = json.loads((repo / "reports/detection.json").read_text())
    assert round(report["test"]["detector"]["rsna_score"], 3) == detection["rsna_score"]
    assert set(report["test"]["image_auroc"]) == {"decision", "detector", "max_box_score", "classifier"}
    assert report["test"]["boxes_under_negative_labels"] == 0
    predictor = json.loads((repo / "reports/decision.json").read_text())
    assert predictor["trained_on"]["source"] == "synthetic" and len(predictor["compared_out_of_fold"]) == 7
    assert (repo / "models/pneumonia.safetensors").exists()
    assert "**Synthetic data.**" in (repo / "reports/report.md").read_text()
    assert "cam_baseline" in report["test"] and report["val"]["model_selected_on_this_split"]
    assert (repo / "models/detector.safetensors").exists() and not list((repo / "models").glob(".detector*"))
    overlays = sorted(p.name for p in (repo / "plots/detection/overlays").glob("*.png"))
    assert overlays and all(name[:3] in ("tp_", "fp_", "fn_") and name.endswith("_01.png") for name in overlays)
    assert "](../plots/detection/overlays/" in (repo / "reports/detection.md").read_text()
    # The CAM overlays too are named by role and rank, so an experiment rewrites them instead of adding files;
    # the report says which patient each shows.
    cam_overlays = sorted(p.name for p in (repo / "plots/localization").glob("*.png"))
    assert cam_overlays and all(re.fullmatch(r"(tp|fp|fn)_\d\d\.png", name) for name in cam_overlays), cam_overlays
    shown = json.loads((repo / "reports/localization.json").read_text())["val"]["overlays"]
    assert sorted(o["file"] for o in shown) == cam_overlays
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout

    run(["dvc", "plots", "show", "-o", "html"], repo)
    page = (repo / "html" / "index.html").read_text()
    # Offline: the page loads the bundled vega, no CDN, and every script it names exists.
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert len(scripts) == 3 and "cdn" not in page and "http" not in "".join(scripts), scripts
    assert all((repo / "html" / src).resolve().is_file() for src in scripts), scripts
    # The charts carry their reference lines and labels (see .dvc/plots/*.json).
    assert "AUROC " in page and "prevalence " in page and "perfect calibration" in page
    assert '"name": "youden"' in page or '"name":"youden"' in page
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    for plot in plots:
        name = plot if isinstance(plot, str) else next(iter(plot))
        if name.endswith(".png") or (repo / name).is_dir() and name.startswith("plots/"):
            assert list((repo / "html" / "static").glob(f"*{Path(name).stem}*")), name
        elif any(not path.endswith(".json") or json.loads((repo / path).read_text()) for path in plot[name]["y"]):
            assert name in page, f"plot {name!r} missing from dvc plots show"
        # else: no data points on these tiny data (e.g. no true-positive box to draw sizes of): DVC leaves it out

    bad_params_destroy_nothing(repo)
    # Another architecture through every stage after train (evaluate, the CAM baseline, the report).
    experiment = run(["dvc", "exp", "run", "-S", "train.lr=0.003", "-S", "train.arch=densenet121",
                      "-S", "train.init=scratch"], repo).stdout
    assert "Running stage 'train'" in experiment and "Running stage 'evaluate'" in experiment
    assert "Running stage 'decide'" in experiment
    assert "Running stage 'evaluate_detection'" in experiment and "Running stage 'detect'" not in experiment
    for upstream in ("download", "dicom_to_npy", "compute_stats"):
        assert f"Running stage '{upstream}'" not in experiment

    # The answer is the decision chosen on val: the detector's on the phantom, which the experiment leaves alone.
    classification = json.loads((repo / "reports/classification.json").read_text())
    baseline = json.loads(run(["git", "show", "HEAD:reports/classification.json"], repo).stdout)
    assert classification["test"]["candidates_auroc"]["classifier"] != baseline["test"]["candidates_auroc"]["classifier"]
    rows = run(["dvc", "metrics", "diff", "--md"], repo).stdout.strip().splitlines()
    assert len(rows) <= 25, rows
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    lr = params_diff["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.0001, 0.003)
    assert params_diff["params.yaml"]["train.arch"]["new"] == "densenet121"
    assert json.loads((repo / "reports" / "localization.json").read_text())["val"]["overlays"]


def bad_params_destroy_nothing(repo):
    """A bad value or a misspelled key stops the run in check_params, before DVC removes any output."""
    kept = ["models/classifier.safetensors", "plots/images/augmented.png", "reports/classification.json",
            "data/processed/manifest.csv", "reports/report.md"]
    before = {path: (repo / path).read_bytes() for path in kept}
    failed = run(["dvc", "exp", "run", "-S", "train.batch_size=0"], repo, check=False)
    assert failed.returncode != 0 and "params.yaml: train.batch_size must be >= 1" in failed.stderr, failed.stderr
    assert {path: (repo / path).read_bytes() for path in kept} == before
    run(["git", "checkout", "params.yaml"], repo)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lrr"] = 3e-4  # a misspelled key: train would not even rerun for it
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0 and "unknown key train.lrr" in failed.stderr, failed.stderr
    assert {path: (repo / path).read_bytes() for path in kept} == before
    run(["git", "checkout", "params.yaml"], repo)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
