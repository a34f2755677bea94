"""The model card: ``reports/model_card.md``, for anyone deciding whether to use the model, and where not to.

Written by the report stage from the file ``pneumonia predict`` loads (``models/pneumonia.safetensors``,
read with :func:`pneumonia.prediction.predictor.load_predictor`: its header's facts and the file's hashes) and from
the committed reports (``reports/dataset.json``, ``classification.json``, ``decision.json``,
``detection.json``). Every number on it is read from those files, none typed.

A fresh clone has the reports but not the model file (DVC tracks it), so the card ends with the model
file's facts as JSON (:func:`model_facts`); :func:`facts_on_card` reads them back, and
``tests/test_model_card.py`` regenerates the card from the committed reports and those facts (and from
the file itself where it is present) to catch a stale card.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from pneumonia.core.atomic import atomic_path
from pneumonia.core.errors import DatasetError
from pneumonia.prediction.predictor import load_predictor
from pneumonia.reporting.report import fmt, interval, point_label, read_report, table

SOURCES = {
    "synthetic": "the offline phantom (`download.source: synthetic`): chest radiographs drawn by "
                 "`pneumonia.data.phantom` in Kaggle's RSNA layout, with known opacities and boxes "
                 "([what it is](../docs/real-data.md#the-phantom-dataset))",
    "kaggle": "the RSNA Pneumonia Detection Challenge's training images and labels, downloaded from Kaggle "
              "(`download.source: kaggle`; [its terms](../DATA_LICENSE.md))",
    "local": "a local copy in the RSNA layout (`download.source: local`, `download.path`)",
}
USES = {
    "train": "fitting both networks; the out-of-distribution guard's mean and covariance",
    "val": "choosing everything: the checkpoints (best val AUROC, best val RSNA score), the answer and its "
           "calibration, the thresholds, the guard's threshold",
    "test": "the headline numbers only: it chose nothing",
}
_FACTS = re.compile(r"## The model file's facts\n.*?```json\n(.*?)\n```", re.S)


def model_facts(path: Path) -> dict[str, Any]:
    """What the card says about the model file: its hashes and size, and its header as the predictor loads it.

    ``md5`` is the hash DVC records for the file in ``dvc.lock``; ``sha256`` the one to check a copy with.
    """
    predictor = load_predictor(path)
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    # plain JSON values: the detector's flip merge (a dataclass, or None) as its header writes it
    plain = lambda value: value.to_json() if hasattr(value, "to_json") else value  # noqa: E731
    fields_of = lambda part: {f.name: plain(getattr(part, f.name)) for f in fields(part) if f.name != "network"}  # noqa: E731
    decision = predictor.decision
    return {
        "file": path.as_posix(), "bytes": path.stat().st_size, "sha256": sha256.hexdigest(), "md5": md5.hexdigest(),
        "classifier": fields_of(predictor.classifier), "detector": fields_of(predictor.detector),
        "decision": {"source": decision.source, "method": decision.method, "threshold": decision.threshold},
        "box_threshold": predictor.box_threshold,
        "ood": {"threshold": predictor.guard.threshold, "quantile": predictor.guard.quantile},
        "trained_on": predictor.trained_on,
    }


def facts_on_card(card: str) -> dict[str, Any]:
    """The model file's facts as a card states them (its last section)."""
    match = _FACTS.search(card)
    if not match:
        raise DatasetError("the model card has no section \"The model file's facts\"; rerun the report stage")
    return json.loads(match[1])


def render(facts: dict[str, Any], reports_dir: Path) -> str:
    """The card's Markdown from the model file's facts and the reports in ``reports_dir``."""
    dataset = read_report(reports_dir / "dataset.json")
    classification = read_report(reports_dir / "classification.json")
    decision = read_report(reports_dir / "decision.json")
    detection = read_report(reports_dir / "detection.json")
    _check_same_model(facts, dataset, classification)
    lines = [f"# Model card: `{facts['file']}`", "", *_warning(facts), *_intro(facts)]
    lines += _data(facts, dataset)
    lines += _headline(classification, detection)
    lines += _calibration(classification, decision)
    lines += _operating_point(classification, decision)
    lines += _out_of_distribution(classification, facts)
    lines += _subgroups(classification)
    lines += _limitations(facts, classification, detection)
    lines += _reproduce(facts)
    return "\n".join(lines).rstrip() + "\n"


def run(model_path: Path, reports_dir: Path) -> Path:
    """Write ``reports_dir/model_card.md`` for the model file at ``model_path``; return its path."""
    text = render(model_facts(model_path), reports_dir)
    out = reports_dir / "model_card.md"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out


def _check_same_model(facts: dict, dataset: dict, classification: dict) -> None:
    """The reports must describe this model file: a card never mixes two runs."""
    patients = {split: c["total"] for split, c in dataset["counts"].items()}
    chosen = classification["decision"]
    header = facts["decision"]
    if {k: v for k, v in patients.items() if v} != {k: v for k, v in facts["trained_on"]["patients"].items() if v}:
        raise DatasetError(f"reports/dataset.json counts {patients} patients per split, the model file "
                           f"{facts['trained_on']['patients']}: rerun the pipeline (dvc repro)")
    if (chosen["source"], chosen["calibration"], chosen["threshold"]) != (header["source"], header["method"],
                                                                          header["threshold"]):
        raise DatasetError(f"reports/classification.json evaluated another decision ({chosen}) than "
                           f"{facts['file']} holds ({header}): rerun the pipeline (dvc repro)")


def _synthetic(facts: dict) -> bool:
    return facts["trained_on"].get("source") == "synthetic"


def _warning(facts: dict) -> list[str]:
    if _synthetic(facts):
        return ["> **Not for clinical use: trained on a synthetic phantom only.** A test of the software, not a "
                "diagnosis: never use it on patients. Every number below measures the software on phantom images, "
                "not how it would do on patients.", ""]
    return ["> **Not for clinical use.** Not a medical device and not clinically validated: the numbers below "
            "are measured on held-out images of the data it was trained on, not in a hospital's practice.", ""]


def _intro(facts: dict) -> list[str]:
    c, d, ood = facts["classifier"], facts["detector"], facts["ood"]
    lines = [
        "Written by the `report` stage (`pneumonia.reporting.model_card`) from the model file's header and the committed "
        "reports (`reports/classification.json`, `decision.json`, `detection.json`, `dataset.json`); no number "
        "on it is typed by hand. The full evaluation: [report.md](report.md).", "",
        "## What it is", "",
        "For one chest radiograph (a single-frame greyscale DICOM): one calibrated probability that it shows "
        "pneumonia (the RSNA challenge's lung opacity, `Target` 1), a label at an operating point chosen on val, "
        "and boxes around the opacities under a positive label only; or no answer, with the reason, for a file "
        "that is unreadable, not a chest radiograph by its header, or unlike the training images. "
        "`pneumonia predict` gives it ([how](../docs/predict.md)).", "",
    ]
    lines += table(["part", "from the model file's header"], [
        ["classifier", f"`{c['arch']}`, {c['image_size']} × {c['image_size']} px input standardised with the train "
                       f"split's mean {c['mean']:.4f} and std {c['std']:.4f} ([0, 1] scale), DICOM windowing "
                       f"`{c['windowing']}`"],
        ["detector", f"`{d['arch']}` backbone, `{d['neck']}` neck (width {d['width']}), {d['image_size']} px input, "
                     f"at most {d['max_boxes']} boxes per image after NMS at IoU {d['nms_iou']}; "
                     + ("no test-time flip" if not d.get("tta") else
                        f"horizontal-flip test-time augmentation merged by {d['tta']['method']} at IoU "
                        f"{d['tta']['iou']}")],
        ["the answer", f"the **{facts['decision']['source']}** score with **{facts['decision']['method']}** "
                       f"calibration; label threshold {facts['decision']['threshold']:.3f} and box threshold "
                       f"{facts['box_threshold']} (both chosen on val)"],
        ["out-of-distribution guard", f"refuses an image whose pooled classifier features lie farther than "
                                      f"{ood['threshold']:.1f} (Mahalanobis) from the train split's: the "
                                      f"{ood['quantile']} quantile of val's distances"],
    ])
    lines += ["## Intended use", ""]
    if _synthetic(facts):
        lines += ["- Testing and developing this pipeline: that training, evaluation, calibration, the guard and "
                  "`pneumonia predict` run end to end and give what they should, on images whose truth is known.",
                  "- A starting point: rerun the pipeline on real radiographs ([real data](../docs/real-data.md)) "
                  "to get a model, and a card, that say something about patients.", ""]
    else:
        lines += ["- Research on pneumonia detection in chest radiographs like those it was trained on, by people "
                  "who can check its answers against a radiologist's reading.", ""]
    lines += ["## Not for", "",
              "- Any clinical use: diagnosing, screening, triaging or prioritising a worklist, or ruling pneumonia "
              "out. It is not a medical device and has not been validated on patients"
              + (" (it has never seen one)." if _synthetic(facts) else "."),
              "- Files other than chest radiographs (`predict` refuses another Modality or BodyPartExamined), and "
              "images the guard refuses: `--allow-out-of-distribution` scores them, but nothing here says what "
              "such a score is worth.",
              "- A population with another prevalence of pneumonia, without correcting the probability "
              "(`pneumonia.prediction.decision.at_prevalence`): it is calibrated at val's.", ""]
    if _synthetic(facts):
        lines[-1:-1] = ["- Any conclusion about real radiographs from the numbers below."]
    return lines


def _data(facts: dict, dataset: dict) -> list[str]:
    counts = dataset["counts"]
    source = facts["trained_on"].get("source")
    lines = ["## Data", "", f"Source: {SOURCES.get(source, f'`{source}`')}. Patients per split (one image each):", ""]
    lines += table(["split", "patients", "with pneumonia", "prevalence", "used for"],
                   [[split, c["total"], c["positive"], c["positive"] / c["total"], USES.get(split, "")]
                    for split, c in counts.items() if c["total"]])
    return lines


def _headline(classification: dict, detection: dict) -> list[str]:
    split = classification["headline_split"]
    block, val = classification[split], classification["val"]
    point_name = classification["headline_operating_point"]
    point, val_point = block["operating_points"][point_name], val["operating_points"][point_name]
    boxes, val_boxes = detection[split]["detector"], detection["val"]["detector"]
    resamples = block["ci95"]["auroc"].get("resamples_used")
    lines = ["## Headline metrics", ""]
    if block["model_selected_on_this_split"]:
        lines += [f"On **{split}** ({block['n']} patients, {block['positive']} with pneumonia). **There is no test "
                  "split: this split chose the model, the calibration and the thresholds, so these numbers are "
                  "optimistic.**", ""]
        header, extra = ["metric", split, "95 % CI"], lambda _: []
    else:
        lines += [f"On **{split}** ({block['n']} patients, {block['positive']} with pneumonia), which chose nothing. "
                  "The val column is the split everything was chosen on: its numbers are optimistic.", ""]
        header, extra = ["metric", split, "95 % CI", "val (chose everything)"], lambda v: [v]
    rows = [
        ["image-level AUROC of the answer", block["auroc"], interval(block["ci95"]["auroc"]), *extra(val["auroc"])],
        ["average precision", block["average_precision"], interval(block["ci95"]["average_precision"]),
         *extra(val["average_precision"])],
    ]
    for metric in ("sensitivity", "specificity"):
        rows.append([f"{metric} at the operating point ({point_label(point_name)}: threshold "
                     f"{point['threshold']:.3f})", point[metric], interval(point.get("ci95", {}).get(metric)),
                     *extra(val_point[metric])])
    rows += [
        ["detector: RSNA challenge score (boxes under a positive label)", boxes["rsna_score"],
         interval(boxes.get("rsna_score_ci95")), *extra(val_boxes["rsna_score"])],
        ["detector: AP@0.5", boxes["ap50"], interval(boxes.get("ap50_ci95")), *extra(val_boxes["ap50"])],
    ]
    lines += table(header, rows)
    return lines + [f"Intervals: bootstrap over patients ({resamples} resamples), the thresholds held fixed. At the "
                    f"operating point on {split}, true positives / false positives / true negatives / false negatives: "
                    f"{point['tp']} / {point['fp']} / {point['tn']} / {point['fn']}.", ""]


def _calibration(classification: dict, decision: dict) -> list[str]:
    split = classification["headline_split"]
    cal, chosen = classification[split]["calibration"], classification["decision"]
    val_prevalence = classification["val"]["calibration"]["prevalence"]
    compared = decision["compared_out_of_fold"]
    lines = ["## Calibration", "",
             f"The probability is the **{chosen['source']}** score through a **{chosen['calibration']}** map, chosen "
             f"on val among {len(compared)} pairs of candidate score and calibration map "
             f"({', '.join(sorted({c['source'] for c in compared}))}; "
             f"{', '.join(sorted({c['method'] for c in compared}))}) by their out-of-fold log loss over "
             f"{decision['folds']} folds of val.", ""]
    lines += table([f"on {split}", "value", "95 % CI"], [
        ["expected calibration error (15 bins), after the map", cal["ece_15_bins"], interval(cal["ece_15_bins_ci95"])],
        ["the same before (the raw score's sigmoid)", cal["ece_15_bins_before_calibration"],
         interval(cal["ece_15_bins_before_calibration_ci95"])],
        ["Brier score, after the map", cal["brier"], interval(cal["brier_ci95"])],
        ["the same before", cal["brier_before_calibration"], interval(cal["brier_before_calibration_ci95"])],
    ])
    return lines + [f"What a probability means: among images like val's (prevalence {val_prevalence:.3f}), that "
                    f"fraction had pneumonia. On {split} the prevalence is {cal['prevalence']:.3f} and the mean "
                    f"probability {cal['mean_probability']:.3f}.", ""]


def _operating_point(classification: dict, decision: dict) -> list[str]:
    name = classification["headline_operating_point"]
    points = classification["val"]["operating_points"]
    val_point = points[name]
    sweep = decision.get("box_threshold_sweep_val", [])
    lines = ["## Operating point", "",
             f"The label is positive when the probability is at least **{val_point['threshold']:.3f}**: the "
             f"threshold reaching sensitivity ≥ {decision['target_sensitivity']} on val "
             f"(`evaluate.target_sensitivity`). Chosen on val, where it gives sensitivity "
             f"{val_point['sensitivity']:.3f} and specificity {val_point['specificity']:.3f} (optimistic there; "
             "the headline table has the held-out figures).",
             "",
             f"Boxes: under a positive label, the detector's boxes scoring at least **{decision['box_threshold']}**, "
             f"the threshold of best val RSNA score among {', '.join(str(s['box_threshold']) for s in sweep)}"
             " (chosen on val). An image labelled negative has no box.",
             "",
             f"The other operating points ({', '.join(point_label(n) for n in points if n != name)}) are in "
             "[report.md](report.md).", ""]
    return lines


def _out_of_distribution(classification: dict, facts: dict) -> list[str]:
    split = classification["headline_split"]
    unlike = classification["unlike_set"]
    lines = ["## Out-of-distribution behaviour", "",
             "Before any probability, `predict` refuses a file whose header names another modality or body part, "
             "then an image whose features lie beyond the guard's threshold "
             f"({facts['ood']['threshold']:.1f}, val's {facts['ood']['quantile']} quantile): such an image gets no "
             "probability and no boxes.", ""]
    rows = [[f"{s}: its own images refused",
             f"{classification[s]['out_of_distribution']['flagged']} of {classification[s]['n']}",
             classification[s]["out_of_distribution"]["flagged_rate"]] for s in dict.fromkeys([split, "val"])]
    rows.append(["unlike images refused (made offline, all kinds below)", f"{unlike['caught']} of {unlike['n']}",
                 unlike["rate"]])
    rows += [[f"— {kind.replace('_', ' ')}: {m['what']}", f"{m['caught']} of {m['n']}", m["rate"]]
             for kind, m in unlike["by_kind"].items()]
    return lines + table(["", "refused", "rate"], rows)


def _subgroups(classification: dict) -> list[str]:
    split = classification["headline_split"]
    sub = classification[split]["subgroups"]
    lines = ["## Subgroups", "",
             f"On {split}, at the operating point (threshold {sub['at_threshold']:.3f}, chosen on val), by the DICOM "
             "header's ViewPosition, PatientSex and PatientAge (age bands: `evaluate.age_bands`). A group with too few "
             "positives or negatives for a rate says so instead.", ""]
    rows = [[f"{kind} {group}", m["n"], m["positives"], m["auroc"], m["sensitivity"], m["specificity"]]
            for kind in ("view", "sex", "age") for group, m in sub[kind].items()]
    lines += table(["group", "n", "positives", "AUROC", "sensitivity", "specificity"], rows)
    return lines + table(["negatives of the class", "n", "false-positive rate"],
                         [[name.replace("_", " "), m["n"], m["fpr"]]
                          for name, m in sub["false_positive_rate_by_class"].items()])


def _limitations(facts: dict, classification: dict, detection: dict) -> list[str]:
    split = classification["headline_split"]
    block, point = classification[split], classification[split]["operating_points"][
        classification["headline_operating_point"]]
    boxes = detection[split]["detector"]
    lines = ["## Limitations", ""]
    if _synthetic(facts):
        lines.append("- **Synthetic data.** The phantom's opacities are drawn by a program the networks can learn: "
                     "figures near 1 here say nothing about real radiographs.")
    lines += [
        f"- **A small held-out split**: {block['n']} patients, {block['positive']} with pneumonia; the sensitivity's "
        f"interval spans {interval(point.get('ci95', {}).get('sensitivity'))}. The intervals hold the thresholds "
        "fixed, so the uncertainty of choosing them on val is not in them.",
        f"- **Calibrated at val's prevalence** ({classification['val']['calibration']['prevalence']:.3f}); elsewhere "
        "the probability is off by the ratio of the odds.",
        f"- **Coarse input and boxes**: images are stretched to {facts['classifier']['image_size']} × "
        f"{facts['classifier']['image_size']} px (the aspect ratio is not kept); the boxes' AP falls from "
        f"{fmt(boxes['ap50'])} at IoU 0.5 to {fmt(boxes['ap50_95'])} over IoU 0.5–0.95.",
        "- **The guard is tested on the kinds of unlike images above only**: that it refuses them says nothing "
        "about subtler shifts (another hospital's scanners, processing or patients).",
        "- **Subgroups** are the header's view, sex and age only; small groups have wide uncertainty, and no "
        "interval is given for them.",
        "",
    ]
    return lines


def _reproduce(facts: dict) -> list[str]:
    return [
        "## How to reproduce", "",
        "The card and the model come from one commit: `git log -1 --format=%H -- reports/model_card.md` names it.",
        "", "```bash",
        "git checkout COMMIT          # the commit that holds this card",
        "make repro                   # or, where a DVC remote holds the run: make setup && .venv/bin/dvc pull",
        f"sha256sum {facts['file']}",
        "```", "",
        f"The file this card describes: sha256 `{facts['sha256']}`, {facts['bytes']:,} bytes (DVC's md5 in "
        f"`dvc.lock`: `{facts['md5']}`). On the same machine with the locked libraries a rerun gives the same "
        "bytes; on another CPU or a GPU they may differ ([reproducibility](../docs/reproducibility.md)).",
        "",
        "## The model file's facts", "",
        "As `pneumonia.prediction.predictor.load_predictor` reads them (the tests read this block back):", "",
        "```json", json.dumps(facts, indent=1, sort_keys=True), "```",
    ]
