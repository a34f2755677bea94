"""The evaluate stage: the predictor's image-level answer on val and, when there is one, the held-out test split.

The answer is the decision chosen on val by the decide stage (:mod:`pneumonia.prediction.decision`: the
classifier, the detector's image probability or both stacked, calibrated), read from the
predictor's model file. The classifier's checkpoint, the detector's epoch, the decision, its
calibration, the out-of-distribution guard and the operating thresholds are all chosen on val;
the headline numbers are test's. Without a test split the val numbers are reported, marked
``model_selected_on_this_split``.

Two outputs. ``metrics/classifier.json`` holds the headline only, what
``dvc metrics diff`` compares (see :func:`headline`). ``reports/classification.json``
holds everything, per reported split: counts; AUROC and average precision with
bootstrap 95 % intervals; ``operating_points`` (the fixed thresholds as ``0p50``,
``0p25``, the decision's own (reaching ``target_sensitivity`` on val) and Youden's J on val),
each with sensitivity, specificity, PPV, NPV, F1, accuracy, the confusion matrix
and intervals; calibration (Brier and ECE with 15 bins, with bootstrap intervals, before
and after the decision's calibration map); each candidate's AUROC; the out-of-distribution
guard's flag rate; subgroups by view, sex and age band; false-positive rates of "Not
Normal" and "Normal" negatives. At the top: the unlike set's catch rate
(:func:`pneumonia.prediction.ood.unlike_images`) and what the models were trained on. Plots for
`dvc plots show` are drawn on the headline split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pneumonia.core.atomic import atomic_path, write_json
from pneumonia.evaluation.bootstrap import auroc, bootstrap_ci, bootstrap_metrics
from pneumonia.evaluation.calibration import brier_score, expected_calibration_error, reliability_curve
from pneumonia.core.errors import DatasetError
from pneumonia.classification.inference import classifier_outputs, default_device
from pneumonia.evaluation.calibration import probability
from pneumonia.data.manifest import CLASS_NAMES, ManifestRow, read_manifest, split_rows
from pneumonia.evaluation.metrics import pr_curve_points, ranking_metrics, roc_curve_points
from pneumonia.prediction.ood import catch_rates, unlike_images
from pneumonia.evaluation.operating_points import choose_thresholds, operating_points, threshold_name
from pneumonia.core.params import EvaluateParams
from pneumonia.prediction.predictor import (
    SYNTHETIC_NOTE, Predictor, RawOutputs, classifier_probability, load_predictor, raw_outputs,
)
from pneumonia.evaluation.subgroups import age_band_labels, false_positive_rates_by_detailed_class, subgroup_metrics

SPLIT = "val"  # where everything is chosen
HISTOGRAM_BINS = 20


def sensitivity_key(params: EvaluateParams) -> str:
    """The operating point reaching the target sensitivity on val: sensitivity_0p90 (the decision's label)."""
    return f"sensitivity_{threshold_name(params.target_sensitivity)}"


def candidate_probabilities(predictor: Predictor, raw: RawOutputs) -> dict[str, np.ndarray]:
    """Each image score that was a candidate, as the probability it had before the decide stage, and the decision's."""
    classifier = classifier_probability(predictor.classifier, raw.classifier_logits)
    detector = probability(raw.detector_logits)
    return {"classifier": classifier, "detector": detector, "mean_of_both": (classifier + detector) / 2,
            "decision": predictor.decision.probability(raw.classifier_logits, raw.detector_logits)}


def uncalibrated(predictor: Predictor, candidates: dict[str, np.ndarray], raw: RawOutputs) -> np.ndarray:
    """The chosen source's probability without any fitted map: sigmoid of its raw logit (stacked: the mean of both)."""
    source = predictor.decision.source
    if source == "classifier":
        return probability(raw.classifier_logits)
    return candidates["detector"] if source == "detector" else candidates["mean_of_both"]


def run(
    processed_dir: Path,
    model_path: Path,
    params: EvaluateParams,
    report_json: Path = Path("reports/classification.json"),
    headline_json: Path = Path("metrics/classifier.json"),
    plots_dir: Path = Path("plots"),
    seed: int = 0,
) -> dict:
    """Write the full report, the headline metrics and the plots; return the full report."""
    predictor = load_predictor(model_path, default_device())
    manifest = read_manifest(processed_dir)
    splits = [s for s in ("val", "test") if split_rows(manifest, s)]
    data = {}
    for split in splits:
        rows = split_rows(manifest, split)
        images = np.load(processed_dir / f"{split}.npy", mmap_mode="r")
        raw = raw_outputs(predictor.classifier, predictor.detector, images, [(r.rows, r.columns) for r in rows],
                          params.batch_size)
        data[split] = (rows, np.array([r.label for r in rows]), raw)
    for split, (_, labels, _) in data.items():
        if len(np.unique(labels)) < 2:
            raise DatasetError(f"the {split} split has a single class: AUROC is undefined; use a larger or stratified split")

    _, val_labels, val_raw = data[SPLIT]
    val_probs = candidate_probabilities(predictor, val_raw)["decision"]
    thresholds = choose_thresholds(val_labels, val_probs, params.target_sensitivity, fixed=params.thresholds)
    thresholds[sensitivity_key(params)] = predictor.decision.threshold  # the label predict prints, chosen on val
    result = {
        "headline_split": splits[-1],
        "headline_operating_point": sensitivity_key(params),  # what metrics/classifier.json's sens/spec are at
        "decision": {"source": predictor.decision.source, "calibration": predictor.decision.method,
                     "threshold": predictor.decision.threshold},
        "trained_on": predictor.trained_on,
        "synthetic": predictor.synthetic,
        "note": SYNTHETIC_NOTE if predictor.synthetic else "",
        "chosen_on_val": {"thresholds": thresholds},
        "unlike_set": _unlike_set(predictor, processed_dir, params, seed),
    }
    for split, (rows, labels, raw) in data.items():
        result[split] = _report(predictor, rows, labels, raw, thresholds, params, seed)
        result[split]["model_selected_on_this_split"] = split == SPLIT

    rows, labels, raw = data[result["headline_split"]]
    points = result[result["headline_split"]]["operating_points"]
    probs = candidate_probabilities(predictor, raw)["decision"]
    _write_plots(plots_dir, rows, labels, probs, thresholds[sensitivity_key(params)], points)
    write_json(report_json, result)
    write_json(headline_json, headline(result, sensitivity_key(params)))
    return result


def _unlike_set(predictor: Predictor, processed_dir: Path, params: EvaluateParams, seed: int) -> dict:
    """The guard on images unlike chest radiographs (:func:`pneumonia.prediction.ood.unlike_images`): the catch rate."""
    from pneumonia.data.phantom.dataset import radiographs_without_lungs

    size = predictor.image_size
    val = np.load(processed_dir / "val.npy", mmap_mode="r")
    no_lungs = radiographs_without_lungs(8, size, seed) if predictor.synthetic else None
    made = unlike_images(size, val, seed, no_lungs)
    images = np.stack([image for _, _, image in made])
    logits, features = classifier_outputs(predictor.classifier, images, params.batch_size)
    flagged = predictor.guard.unlike(features)
    rates = catch_rates([kind for kind, _, _ in made], flagged)
    missed = [f"{kind}: {name}" for (kind, name, _), caught in zip(made, flagged) if not caught]
    return rates | {"missed": missed, "classifier_probability_if_scored_mean": float(
        np.mean(classifier_probability(predictor.classifier, logits)))}


def _calibration(labels: np.ndarray, probs: np.ndarray, before: np.ndarray, params: EvaluateParams, seed: int) -> dict:
    out = {}
    for suffix, values in (("", probs), ("_before_calibration", before)):
        for name, statistic in (("brier", brier_score), ("ece_15_bins", expected_calibration_error)):
            low, high, _ = bootstrap_ci(labels, values, statistic, resamples=params.bootstrap_resamples, seed=seed)
            out[name + suffix] = statistic(labels, values)
            out[name + suffix + "_ci95"] = {"low": low, "high": high}
    out["mean_probability"] = float(np.mean(probs))
    out["prevalence"] = float(np.mean(labels))
    return out


def _report(predictor: Predictor, rows, labels, raw: RawOutputs, thresholds, params: EvaluateParams, seed: int) -> dict:
    candidates = candidate_probabilities(predictor, raw)
    probs = candidates["decision"]
    report = {
        "n": len(labels),
        "positive": int(labels.sum()),
        "negative": int(len(labels) - labels.sum()),
        **ranking_metrics(labels, probs),
    }
    points = operating_points(labels, probs, thresholds)
    intervals = bootstrap_metrics(labels, probs, thresholds, resamples=params.bootstrap_resamples, seed=seed)
    report["ci95"] = {"auroc": intervals["auroc"], "average_precision": intervals["average_precision"]}
    for name, point in points.items():
        point["ci95"] = intervals[name]
    report["operating_points"] = points
    report["calibration"] = _calibration(labels, probs, uncalibrated(predictor, candidates, raw), params, seed)
    report["candidates_auroc"] = {}
    for name, values in candidates.items():
        low, high, _ = bootstrap_ci(labels, values, auroc, resamples=params.bootstrap_resamples, seed=seed)
        report["candidates_auroc"][name] = {"auroc": auroc(labels, values), "ci95": {"low": low, "high": high}}
    flagged = predictor.guard.unlike(raw.features)
    report["out_of_distribution"] = {"flagged": int(flagged.sum()), "flagged_rate": float(flagged.mean()),
                                     "threshold": predictor.guard.threshold}
    chosen = thresholds[sensitivity_key(params)]
    report["subgroups"] = {
        "at_threshold": chosen,
        "view": subgroup_metrics(labels, probs, np.array([r.view or "unknown" for r in rows]), chosen),
        "sex": subgroup_metrics(labels, probs, np.array([r.sex or "unknown" for r in rows]), chosen),
        "age": subgroup_metrics(labels, probs, age_band_labels([r.age for r in rows], params.age_bands), chosen),
        "false_positive_rate_by_class": false_positive_rates_by_detailed_class(
            labels, probs, np.array([r.detailed_class for r in rows]), chosen
        ),
    }
    return report


def headline(report: dict, operating_point: str) -> dict:
    """The image-level answer's headline on the headline split: ~10 numbers, short keys for `dvc metrics show`.

    ``sens``/``spec`` are at ``operating_point`` (its threshold chosen on val);
    ``ood_flag`` is the fraction of the split refused as unlike the training images,
    ``ood_catch`` the fraction of the unlike set refused;
    ``auroc_low``/``auroc_high`` bound the bootstrap 95 % interval; ``ap`` is the
    average precision; ``ece`` uses 15 equal-width bins. Three decimals: the
    intervals are a few hundredths wide, so more digits are noise.
    """
    split = report["headline_split"]
    block = report[split]
    point = block["operating_points"][operating_point]
    values = {
        "auroc": block["auroc"],
        "auroc_low": block["ci95"]["auroc"]["low"],
        "auroc_high": block["ci95"]["auroc"]["high"],
        "ap": block["average_precision"],
        "sens": point["sensitivity"],
        "spec": point["specificity"],
        "brier": block["calibration"]["brier"],
        "ece": block["calibration"]["ece_15_bins"],
        "ood_flag": block["out_of_distribution"]["flagged_rate"],
        "ood_catch": report["unlike_set"]["rate"],
    }
    return {"split": split} | {k: None if v is None else round(float(v), 3) for k, v in values.items()}


def _write_plots(
    plots_dir: Path, rows: list[ManifestRow], labels: np.ndarray, probs: np.ndarray, chosen: float, points: dict
) -> None:
    """ROC and PR with the operating ``points``, predictions at ``chosen`` (confusion matrix), reliability, histograms."""
    # The first point carries the curve's summary, which the chart prints (see .dvc/plots/*.json).
    ranking = ranking_metrics(labels, probs)
    roc = roc_curve_points(labels, probs)
    roc[0] = roc[0] | {"auroc": ranking["auroc"]}
    write_json(plots_dir / "roc.json", {"roc": roc})
    pr = pr_curve_points(labels, probs)
    pr[0] = pr[0] | {"average_precision": ranking["average_precision"], "prevalence": float(np.mean(labels))}
    write_json(plots_dir / "precision_recall.json", {"precision_recall": pr})
    write_json(
        plots_dir / "operating_points.json",
        {
            "operating_points": [
                {"name": name, "threshold": p["threshold"], "fpr": 1 - (p["specificity"] or 0),
                 "tpr": p["sensitivity"], "recall": p["sensitivity"], "precision": p["ppv"]}
                for name, p in points.items()
            ]
        },
    )
    write_json(plots_dir / "reliability.json", {"reliability": reliability_curve(labels, probs)})
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    positive, _ = np.histogram(probs[labels == 1], edges)
    negative, _ = np.histogram(probs[labels == 0], edges)
    write_json(
        plots_dir / "score_histogram.json",
        {"histogram": [
            {"probability": round(float(lo + (hi - lo) / 2), 4), "pneumonia": int(p), "no_pneumonia": int(n)}
            for lo, hi, p, n in zip(edges[:-1], edges[1:], positive, negative)
        ]},
    )
    with atomic_path(plots_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        # truth/prediction as class names: what the confusion matrix's axes show
        writer.writerow(["patient_id", "split", "label", "probability", "predicted", "truth", "prediction"])
        for row, label, prob in zip(rows, labels, probs):
            predicted = int(prob >= chosen)
            writer.writerow([row.patient_id, row.split, int(label), f"{prob:.6f}", predicted,
                             CLASS_NAMES[int(label)], CLASS_NAMES[predicted]])
