"""reports/model_card.md: current with the committed reports and model file, and saying what they say."""

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pneumonia.reporting import model_card
from pneumonia.classification.classifier import classifier_header
from pneumonia.core.errors import DatasetError
from pneumonia.classification.model import PneumoniaClassifier
from pneumonia.core.model_file import save_model
from pipeline_repo import ROOT
from pneumonia.detection.tta import FlipMerge
from tiny_predictor import write_predictor

MODEL = "models/pneumonia.safetensors"


def _locked_md5(path: str) -> str:
    """The md5 dvc.lock records for ``path`` as an output of the stage that writes it."""
    stages = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    return next(out["md5"] for stage in stages.values() for out in stage.get("outs", []) if out["path"] == path)


def test_the_committed_model_card_is_current():
    """Regenerated from the committed reports it is the same text; its model file is the committed run's.

    A fresh clone has no model file (DVC tracks it): the card's own facts block stands in for it, tied to the
    run by dvc.lock's md5. Where the file is the committed run's, its facts must be the card's.
    """
    text = (ROOT / "reports" / "model_card.md").read_text()
    facts = model_card.facts_on_card(text)
    assert facts["md5"] == _locked_md5(MODEL), "reports/model_card.md describes another model file than dvc.lock"
    model = ROOT / MODEL
    if model.exists() and hashlib.md5(model.read_bytes()).hexdigest() == facts["md5"]:
        assert model_card.model_facts(model) | {"file": MODEL} == facts
    assert model_card.render(facts, ROOT / "reports") == text, (
        "reports/model_card.md is stale: rerun the report stage (dvc repro report) and commit it")


# A small fabricated run: every number distinct, so the card is seen to put each in its place.
def _point(threshold, sens, spec, tp, fp, tn, fn):
    return {"threshold": threshold, "sensitivity": sens, "specificity": spec, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "ci95": {"sensitivity": {"low": sens - 0.1, "high": sens + 0.05},
                     "specificity": {"low": spec - 0.1, "high": spec + 0.01}}}


def _split(n, positive, auroc, point, flagged):
    group = {"n": 30, "positives": 12, "negatives": 18, "auroc": 0.811, "sensitivity": 0.833, "specificity": 0.722}
    return {
        "n": n, "positive": positive, "auroc": auroc, "average_precision": auroc - 0.1,
        "ci95": {"auroc": {"low": auroc - 0.05, "high": auroc + 0.01, "resamples_used": 200},
                 "average_precision": {"low": auroc - 0.2, "high": auroc - 0.02, "resamples_used": 200}},
        "operating_points": {"sensitivity_0p80": point},
        "calibration": {"ece_15_bins": 0.061, "ece_15_bins_ci95": {"low": 0.041, "high": 0.081},
                        "ece_15_bins_before_calibration": 0.152, "ece_15_bins_before_calibration_ci95": None,
                        "brier": 0.123, "brier_ci95": {"low": 0.101, "high": 0.145},
                        "brier_before_calibration": 0.171, "brier_before_calibration_ci95": None,
                        "prevalence": positive / n, "mean_probability": 0.345},
        "out_of_distribution": {"flagged": flagged, "flagged_rate": flagged / n, "threshold": 12.5},
        "subgroups": {"at_threshold": point["threshold"], "view": {"PA": group},
                      "sex": {"F": group}, "age": {"<40": group},
                      "false_positive_rate_by_class": {"normal": {"n": 20, "fpr": 0.05}}},
        "model_selected_on_this_split": False,
    }


def _fabricated(tmp_path: Path, headline: str = "test") -> tuple[dict, Path]:
    """(model facts, reports folder) of a run of 60 patients: 30 train, 20 val, 10 test (or none)."""
    counts = {"train": (30, 9), "val": (20, 6), "test": (10, 4) if headline == "test" else (0, 0)}
    facts = {
        "file": MODEL, "bytes": 1234567, "sha256": "ab" * 32, "md5": "cd" * 16,
        "classifier": {"arch": "resnet34", "image_size": 96, "mean": 0.4321, "std": 0.2345, "temperature": 1.5,
                       "threshold": 0.5, "windowing": "auto"},
        "detector": {"arch": "resnet18", "neck": "fpn", "width": 32, "image_size": 96, "mean": 0.4321, "std": 0.2345,
                     "image_threshold": 0.4, "box_threshold": 0.3, "nms_iou": 0.45, "max_boxes": 3,
                     "tta": {"method": "wbf", "iou": 0.5}},
        "decision": {"source": "stacked", "method": "isotonic", "threshold": 0.4375},
        "box_threshold": 0.35, "ood": {"threshold": 12.5, "quantile": 0.97},
        "trained_on": {"source": "synthetic", "patients": {k: n for k, (n, _) in counts.items()}},
    }
    val = _split(20, 6, 0.912, _point(0.4375, 0.833, 0.857, 5, 2, 12, 1), 1)
    classification = {
        "headline_split": headline, "headline_operating_point": "sensitivity_0p80",
        "decision": {"source": "stacked", "calibration": "isotonic", "threshold": 0.4375},
        "unlike_set": {"n": 9, "caught": 8, "rate": 8 / 9,
                       "by_kind": {"noise": {"n": 9, "caught": 8, "rate": 8 / 9, "what": "uniform noise"}}},
        "val": val | {"model_selected_on_this_split": True},
    }
    if headline == "test":
        classification["test"] = _split(10, 4, 0.876, _point(0.4375, 0.75, 0.667, 3, 2, 4, 1), 2)
    boxes = lambda score, ap: {"rsna_score": score, "rsna_score_ci95": {"low": score - 0.1, "high": score + 0.1},  # noqa: E731
                               "ap50": ap, "ap50_95": ap / 2}
    detection = {"headline_split": headline, "val": {"detector": boxes(0.456, 0.567)}}
    if headline == "test":
        detection["test"] = {"detector": boxes(0.389, 0.678)}
    decision = {"target_sensitivity": 0.8, "folds": 3, "box_threshold": 0.35,
                "compared_out_of_fold": [{"source": s, "method": m} for s in ("classifier", "stacked")
                                         for m in ("platt", "isotonic")],
                "box_threshold_sweep_val": [{"box_threshold": t} for t in (0.25, 0.35)]}
    dataset = {"mean": 0.4321, "std": 0.2345,
               "counts": {k: {"total": n, "positive": p, "negative": n - p} for k, (n, p) in counts.items()}}
    reports = tmp_path / "reports"
    reports.mkdir()
    for name, report in [("classification", classification), ("detection", detection), ("decision", decision),
                         ("dataset", dataset)]:
        (reports / f"{name}.json").write_text(json.dumps(report))
    return facts, reports


def test_the_card_states_each_number_of_the_reports_where_it_belongs(tmp_path):
    facts, reports = _fabricated(tmp_path)
    card = model_card.render(facts, reports)
    sections = card.split("\n## ")
    assert card.startswith("# Model card: `models/pneumonia.safetensors`\n\n> **Not for clinical use: trained on a "
                           "synthetic phantom only.**")
    assert [s.split("\n")[0] for s in sections[1:]] == [
        "What it is", "Intended use", "Not for", "Data", "Headline metrics", "Calibration", "Operating point",
        "Out-of-distribution behaviour", "Subgroups", "Limitations", "How to reproduce", "The model file's facts"]
    section = {s.split("\n")[0]: s for s in sections[1:]}
    assert "`resnet34`, 96 × 96 px" in section["What it is"] and "**stacked** score with **isotonic**" in card
    assert "`fpn` neck" in section["What it is"] and "flip test-time augmentation merged by wbf at IoU 0.5" in card
    assert "| test | 10 | 4 | 0.400 | the headline numbers only: it chose nothing |" in section["Data"]
    assert "| val | 20 | 6 | 0.300 | choosing everything" in section["Data"]
    headline = section["Headline metrics"]
    assert "On **test** (10 patients, 4 with pneumonia), which chose nothing" in headline
    assert "| image-level AUROC of the answer | 0.876 | 0.826–0.886 | 0.912 |" in headline
    assert ("| sensitivity at the operating point (sensitivity ≥ 0.80 on val: threshold 0.438) | 0.750 | 0.650–0.800 "
            "| 0.833 |") in headline
    assert "| specificity at the operating point" in headline and "| 0.667 | 0.567–0.677 | 0.857 |" in headline
    assert "| detector: RSNA challenge score (boxes under a positive label) | 0.389 | 0.289–0.489 | 0.456 |" in headline
    assert "| detector: AP@0.5 | 0.678 | – | 0.567 |" in headline, "no interval in the report: none on the card"
    assert "(200 resamples)" in headline and "3 / 2 / 4 / 1" in headline
    calibration = section["Calibration"]
    assert "among 4 pairs" in calibration and "over 3 folds of val" in calibration
    assert "| expected calibration error (15 bins), after the map | 0.061 | 0.041–0.081 |" in calibration
    assert "| Brier score, after the map | 0.123 | 0.101–0.145 |" in calibration
    assert "| the same before | 0.171 | – |" in calibration
    point = section["Operating point"]
    assert "at least **0.438**" in point and "sensitivity ≥ 0.8 on val" in point and "Chosen on val" in point
    assert "sensitivity 0.833 and specificity 0.857" in point and "at least **0.35**" in point
    ood = section["Out-of-distribution behaviour"]
    assert "| test: its own images refused | 2 of 10 | 0.200 |" in ood
    assert "| val: its own images refused | 1 of 20 | 0.050 |" in ood and "| 8 of 9 | 0.889 |" in ood
    assert "(12.5, val's 0.97 quantile)" in ood
    subgroups = section["Subgroups"]
    assert "| view PA | 30 | 12 | 0.811 | 0.833 | 0.722 |" in subgroups and "chosen on val" in subgroups
    assert "| normal | 20 | 0.050 |" in subgroups
    assert "0.650–0.800" in section["Limitations"] and "from 0.678 at IoU 0.5 to 0.339" in section["Limitations"]
    assert "sha256 `" + "ab" * 32 + "`, 1,234,567 bytes" in section["How to reproduce"]
    assert "git log -1 --format=%H -- reports/model_card.md" in section["How to reproduce"]
    assert model_card.facts_on_card(card) == facts


def test_a_subgroup_too_small_for_a_rate_says_so(tmp_path):
    facts, reports = _fabricated(tmp_path)
    classification = json.loads((reports / "classification.json").read_text())
    small = {"n": 5, "positives": 2, "negatives": 3, "auroc": "too few positives (n=2)",
             "sensitivity": "too few positives (n=2)", "specificity": "too few negatives (n=3)"}
    classification["test"]["subgroups"]["view"]["AP"] = small
    (reports / "classification.json").write_text(json.dumps(classification))
    card = model_card.render(facts, reports)
    assert ("| view AP | 5 | 2 | too few positives (n=2) | too few positives (n=2) | too few negatives (n=3) |"
            in card)


def test_without_a_test_split_the_headline_is_val_and_called_optimistic(tmp_path):
    facts, reports = _fabricated(tmp_path, headline="val")
    card = model_card.render(facts, reports)
    assert "On **val** (20 patients, 6 with pneumonia). **There is no test split" in card and "optimistic" in card
    assert "| image-level AUROC of the answer | 0.912 | 0.862–0.922 |\n" in card
    assert "| test |" not in card


def test_a_model_trained_on_real_data_is_still_not_for_clinical_use(tmp_path):
    facts, reports = _fabricated(tmp_path)
    facts["trained_on"]["source"] = "kaggle"
    card = model_card.render(facts, reports)
    assert card.split("\n")[2].startswith("> **Not for clinical use.** Not a medical device")
    assert "phantom" not in card.split("## Data")[0] and "RSNA Pneumonia Detection Challenge" in card


def test_a_card_never_mixes_two_runs(tmp_path):
    facts, reports = _fabricated(tmp_path)
    other = copy.deepcopy(facts)
    other["decision"]["threshold"] = 0.5
    with pytest.raises(DatasetError, match="another decision"):
        model_card.render(other, reports)
    other = copy.deepcopy(facts)
    other["trained_on"]["patients"]["train"] = 31
    with pytest.raises(DatasetError, match="patients per split"):
        model_card.render(other, reports)


def test_a_changed_report_makes_the_card_stale(tmp_path):
    """The staleness check can fail: one number changed in a report is a card that no longer matches."""
    facts, reports = _fabricated(tmp_path)
    card = model_card.render(facts, reports)
    detection = json.loads((reports / "detection.json").read_text())
    detection["test"]["detector"]["ap50"] = 0.679
    (reports / "detection.json").write_text(json.dumps(detection))
    assert model_card.render(facts, reports) != card


def test_the_facts_are_read_from_the_predictor_file(tmp_path):
    """A real predictor file (random weights): its hashes, size and header as load_predictor reads them."""
    classifier = PneumoniaClassifier(image_size=32, mean=0.4, std=0.3)
    save_model(tmp_path / "classifier.safetensors", "classifier", classifier.network.state_dict(),
               classifier_header(classifier.hparams))
    path = write_predictor(tmp_path / "pneumonia.safetensors", tmp_path / "classifier.safetensors", threshold=0.625,
                           source="kaggle", train_patients=30, tta=FlipMerge("nms", 0.4))
    facts = model_card.model_facts(path)
    data = path.read_bytes()
    assert facts["sha256"] == hashlib.sha256(data).hexdigest() and facts["md5"] == hashlib.md5(data).hexdigest()
    assert facts["bytes"] == len(data) and facts["file"] == path.as_posix()
    assert facts["classifier"]["arch"] == "resnet18" and facts["detector"]["arch"] == "resnet18"
    assert facts["detector"]["neck"] == "topdown" and facts["detector"]["tta"] == {"method": "nms", "iou": 0.4}
    assert facts["decision"] == {"source": "classifier", "method": "temperature", "threshold": 0.625}
    assert facts["trained_on"] == {"source": "kaggle", "patients": {"train": 30, "val": 12, "test": 0}}
    assert json.loads(json.dumps(facts)) == facts, "the facts travel as JSON on the card"
