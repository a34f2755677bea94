"""The real `dvc repro` and `dvc exp run` on tiny params in a temporary git repository.

The session's baseline `dvc repro` runs once (tests/pipeline_repo.py); this module copies it twice:
``baseline`` for the tests that only read its outputs, and ``experiment_repo`` where refused params
and then an experiment run, each once, in module-scoped fixtures whose results the tests read.
"""

import json
import re
import subprocess
from dataclasses import dataclass
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


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The tiny pipeline after its `dvc repro`, committed (run once per session): only read, never changed."""
    return baseline_repo(tmp_path_factory.mktemp("baseline") / "repo", session_folder(tmp_path_factory))


# --- the baseline run's outputs ---------------------------------------------------------------------


def test_the_run_prints_no_library_noise(baseline):
    log = (baseline / BASELINE_LOG).read_text()
    noise = [line for line in log.splitlines() if "litlogger" in line or "deprecated" in line]
    assert not noise, noise


def test_every_declared_output_is_written_and_the_splits_have_their_sizes(baseline):
    for out in declared_outs(baseline):
        assert (baseline / out).exists(), f"{out} declared in dvc.yaml but not written"
    processed = baseline / "data/processed"
    manifest = (processed / "manifest.csv").read_text().splitlines()
    shapes = {split: np.load(processed / f"{split}.npy").shape for split in ("train", "val", "test")}
    assert shapes == {"train": (24, 32, 32), "val": (12, 32, 32), "test": (12, 32, 32)}
    assert len(manifest) == 1 + 48


def test_the_headline_metrics_are_few_and_agree_with_the_data(baseline):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], baseline).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert set(metrics) == {"metrics/dataset.json", "metrics/classifier.json", "metrics/cam.json", "metrics/detection.json"}
    headline = metrics["metrics/classifier.json"]["data"]
    assert headline["split"] == "test" and headline["auroc_low"] <= headline["auroc"] <= headline["auroc_high"]
    assert metrics["metrics/dataset.json"]["data"] == {"train": 24, "val": 12, "test": 12}
    leaves = sum(len(m["data"]) for m in metrics.values())
    assert leaves <= 25, f"{leaves} headline metrics: the detail belongs in reports/"


def test_the_classification_report_and_the_page_that_shows_it(baseline):
    evaluation = json.loads((baseline / "reports/classification.json").read_text())
    assert evaluation["val"]["model_selected_on_this_split"] and not evaluation["test"]["model_selected_on_this_split"]
    assert set(evaluation["test"]["operating_points"]) == {"0p50", "0p25", "sensitivity_0p90", "youden"}
    report = (baseline / "reports/report.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (baseline / "reports" / image).is_file(), image
    assert f"| AUROC | {evaluation['test']['auroc']:.3f} |" in report
    assert "**Synthetic data.**" in report


def test_the_detection_metrics_report_and_overlays(baseline):
    detection = json.loads((baseline / "metrics/detection.json").read_text())  # `dvc metrics show` drops nulls
    assert set(detection) == {"split", "rsna_score", "ap50", "auroc", "size_spearman", "area_mae"}
    assert detection["split"] == "test" and 0 <= detection["rsna_score"] <= 1 and 0 <= detection["ap50"] <= 1
    report = json.loads((baseline / "reports/detection.json").read_text())
    assert round(report["test"]["detector"]["rsna_score"], 3) == detection["rsna_score"]
    assert set(report["test"]["image_auroc"]) == {"decision", "detector", "max_box_score", "classifier"}
    assert report["test"]["boxes_under_negative_labels"] == 0
    assert "cam_baseline" in report["test"] and report["val"]["model_selected_on_this_split"]
    assert not list((baseline / "models").glob(".detector*"))  # no training leftovers beside the model
    overlays = sorted(p.name for p in (baseline / "plots/detection/overlays").glob("*.png"))
    assert overlays and all(name[:3] in ("tp_", "fp_", "fn_") and name.endswith("_01.png") for name in overlays)
    assert "](../plots/detection/overlays/" in (baseline / "reports/detection.md").read_text()


def test_the_decision_is_trained_on_the_phantom_and_compares_every_candidate(baseline):
    predictor = json.loads((baseline / "reports/decision.json").read_text())
    assert predictor["trained_on"]["source"] == "synthetic" and len(predictor["compared_out_of_fold"]) == 7


def test_the_cam_overlays_are_named_by_role_and_rank(baseline):
    # So an experiment rewrites them instead of adding files; the report says which patient each shows.
    cam_overlays = sorted(p.name for p in (baseline / "plots/localization").glob("*.png"))
    assert cam_overlays and all(re.fullmatch(r"(tp|fp|fn)_\d\d\.png", name) for name in cam_overlays), cam_overlays
    shown = json.loads((baseline / "reports/localization.json").read_text())["val"]["overlays"]
    assert sorted(o["file"] for o in shown) == cam_overlays


def test_the_committed_run_is_up_to_date(baseline):
    assert "Data and pipelines are up to date" in run(["dvc", "status"], baseline).stdout


# --- dvc plots show -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plots_page(baseline):
    """The folder `dvc plots show -o html` writes in the baseline copy (its index.html and static/)."""
    run(["dvc", "plots", "show", "-o", "html"], baseline)
    return baseline / "html"


def test_the_plots_page_works_offline_with_its_reference_lines(plots_page):
    page = (plots_page / "index.html").read_text()
    # Offline: the page loads the bundled vega, no CDN, and every script it names exists.
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert len(scripts) == 3 and "cdn" not in page and "http" not in "".join(scripts), scripts
    assert all((plots_page / src).resolve().is_file() for src in scripts), scripts
    # The charts carry their reference lines and labels (see .dvc/plots/*.json).
    assert "AUROC " in page and "prevalence " in page and "perfect calibration" in page
    assert '"name": "youden"' in page or '"name":"youden"' in page


def test_every_plot_of_dvc_yaml_is_on_the_page(baseline, plots_page):
    page = (plots_page / "index.html").read_text()
    plots = yaml.safe_load((baseline / "dvc.yaml").read_text())["plots"]
    for plot in plots:
        name = plot if isinstance(plot, str) else next(iter(plot))
        if name.endswith(".png") or (baseline / name).is_dir() and name.startswith("plots/"):
            assert list((plots_page / "static").glob(f"*{Path(name).stem}*")), name
        elif any(not path.endswith(".json") or json.loads((baseline / path).read_text()) for path in plot[name]["y"]):
            assert name in page, f"plot {name!r} missing from dvc plots show"
        # else: no data points on these tiny data (e.g. no true-positive box to draw sizes of): DVC leaves it out


# --- refused params, then an experiment, in a second copy ---------------------------------------

# Outputs of every part of the pipeline, which a refused run must leave byte for byte.
KEPT = ["models/classifier.safetensors", "plots/images/augmented.png", "reports/classification.json",
        "data/processed/manifest.csv", "reports/report.md"]


@pytest.fixture(scope="module")
def experiment_repo(tmp_path_factory):
    """A second copy of the baseline, for the runs that change it (in the order of the fixtures below)."""
    return baseline_repo(tmp_path_factory.mktemp("experiment") / "repo", session_folder(tmp_path_factory))


@dataclass
class Refusal:
    run: subprocess.CompletedProcess
    kept_outputs: bool  # every file of KEPT byte-identical after it


@pytest.fixture(scope="module")
def refusals(experiment_repo):
    """A bad value (`dvc exp run -S`) and a misspelled key (edited params.yaml, `dvc repro`), each undone after,
    and what `dvc status` says then."""
    repo = experiment_repo
    before = {path: (repo / path).read_bytes() for path in KEPT}

    def refused(args: list[str]) -> Refusal:
        result = run(args, repo, check=False)
        refusal = Refusal(result, {path: (repo / path).read_bytes() for path in KEPT} == before)
        run(["git", "checkout", "params.yaml"], repo)
        return refusal

    bad_value = refused(["dvc", "exp", "run", "-S", "train.batch_size=0"])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lrr"] = 3e-4  # a misspelled key: train would not even rerun for it
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    misspelled = refused(["dvc", "repro"])
    return {"bad value": bad_value, "misspelled key": misspelled, "status after": run(["dvc", "status"], repo).stdout}


def test_a_bad_value_stops_the_run_in_check_params_and_destroys_nothing(refusals):
    refusal = refusals["bad value"]
    assert refusal.run.returncode != 0, refusal.run.stdout
    assert re.search(r"params\.yaml: train\.batch_size .*>= 1", refusal.run.stderr), refusal.run.stderr
    assert refusal.kept_outputs


def test_a_misspelled_key_stops_the_run_in_check_params_and_destroys_nothing(refusals):
    refusal = refusals["misspelled key"]
    assert refusal.run.returncode != 0, refusal.run.stdout
    assert re.search(r"unknown key.*train\.lrr", refusal.run.stderr), refusal.run.stderr
    assert refusal.kept_outputs
    assert "Data and pipelines are up to date" in refusals["status after"]


@pytest.fixture(scope="module")
def experiment(experiment_repo, refusals):
    """What `dvc exp run` printed for another architecture through every stage after train (evaluate, the
    CAM baseline, the report); it runs after the refusals, in the same copy."""
    return run(["dvc", "exp", "run", "-S", "train.lr=0.003", "-S", "train.arch=densenet121",
                "-S", "train.init=scratch"], experiment_repo).stdout


def test_an_experiment_reruns_train_and_what_follows_it_only(experiment):
    assert "Running stage 'train'" in experiment and "Running stage 'evaluate'" in experiment
    assert "Running stage 'decide'" in experiment
    assert "Running stage 'evaluate_detection'" in experiment and "Running stage 'detect'" not in experiment
    for upstream in ("download", "dicom_to_npy", "compute_stats"):
        assert f"Running stage '{upstream}'" not in experiment


def test_the_experiment_changes_the_classifier_and_its_diffs_stay_short(experiment_repo, experiment):
    repo = experiment_repo
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
