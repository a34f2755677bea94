"""The report stage: ``reports/report.md``, the page a person opens after ``dvc repro``.

Everything on it is read from the pipeline's committed reports (``reports/*.json``)
and plot data (``plots/*.json``), never typed by hand: the headline table, the
operating points, subgroups, calibration, the CAM localization and, when the
detector has run, its section (``reports/detection.md``). The key plots are
drawn as PNGs beside it (``reports/figures/``) with matplotlib, because GitHub
renders images in Markdown but not DVC's Vega plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from pneumonia.core.atomic import atomic_path  # noqa: E402
from pneumonia.core.errors import DatasetError  # noqa: E402
from pneumonia.data.manifest import CLASS_NAMES  # noqa: E402

FIGURES = "figures"
POINT_LABELS = {"0p50": "0.50", "0p25": "0.25", "youden": "Youden (val)"}  # else sensitivity_0pXX


def read_report(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def interval(ci: dict | None) -> str:
    return "–" if not ci or ci.get("low") is None else f"{ci['low']:.3f}–{ci['high']:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def point_label(name: str) -> str:
    """``sensitivity_0p90`` -> "sensitivity ≥ 0.90 on val"; ``0p50`` -> "0.50"."""
    if name.startswith("sensitivity_"):
        return f"sensitivity ≥ {name.removeprefix('sensitivity_').replace('p', '.')} on val"
    return POINT_LABELS.get(name, name)


def classification_section(report: dict) -> list[str]:
    split = report["headline_split"]
    block = report[split]
    chosen = "" if not block["model_selected_on_this_split"] else (
        " **The checkpoint and thresholds were chosen on this split: these numbers are optimistic.**"
    )
    decision = report["decision"]
    lines = [
        "## Classification: the image-level answer",
        "",
        f"The probability `pneumonia predict` prints is the **{decision['source']}** score with a "
        f"**{decision['calibration']}** calibration map, chosen on val among the classifier, the detector's image "
        f"probability and both stacked, by out-of-fold log loss (`reports/decision.json`). "
        f"Headline split: **{split}** ({block['n']} patients, {block['positive']} with pneumonia). "
        f"Everything chosen (checkpoints, decision, calibration, thresholds, the out-of-distribution guard) was "
        f"chosen on val.{chosen}",
        "",
    ]
    lines += table(
        ["metric", "value", "95 % CI (bootstrap)"],
        [
            ["AUROC", block["auroc"], interval(block["ci95"]["auroc"])],
            ["average precision", block["average_precision"], interval(block["ci95"]["average_precision"])],
        ],
    )
    lines += _operating_points(block)
    lines += _calibration(report, block)
    lines += ["### Candidates for the answer (AUROC, bootstrap 95 % CI)", ""]
    lines += table(["score", "AUROC", "95 % CI"],
                    [[name.replace("_", " "), c["auroc"], interval(c["ci95"])]
                     for name, c in block["candidates_auroc"].items()])
    lines += ood_section(report, split)
    lines += _subgroups(block)
    return lines


def _operating_points(block: dict) -> list[str]:
    lines: list[str] = []
    lines += ["### Operating points", ""]
    rows = []
    for name, p in block["operating_points"].items():
        ci = p.get("ci95", {})
        rows.append([
            point_label(name), p["threshold"], p["sensitivity"], interval(ci.get("sensitivity")),
            p["specificity"], interval(ci.get("specificity")), p["ppv"], p["npv"], p["f1"], p["accuracy"],
            f"{p['tp']} / {p['fp']} / {p['tn']} / {p['fn']}",
        ])
    lines += table(
        ["threshold", "value", "sensitivity", "95 % CI", "specificity", "95 % CI", "PPV", "NPV", "F1", "accuracy",
         "TP / FP / TN / FN"],
        rows,
    )
    return lines


def _calibration(report: dict, block: dict) -> list[str]:
    decision = report["decision"]
    lines: list[str] = []
    cal = block["calibration"]
    lines += ["### Calibration", ""]
    lines += table(
        ["", "Brier", "95 % CI", "ECE (15 bins)", "95 % CI"],
        [
            [f"after the {decision['calibration']} map (what predict prints)", cal["brier"],
             interval(cal["brier_ci95"]), cal["ece_15_bins"], interval(cal["ece_15_bins_ci95"])],
            ["before (the raw score's sigmoid)", cal["brier_before_calibration"],
             interval(cal["brier_before_calibration_ci95"]), cal["ece_15_bins_before_calibration"],
             interval(cal["ece_15_bins_before_calibration_ci95"])],
        ],
    )
    val_prevalence = report["val"]["calibration"]["prevalence"]
    lines += [f"A probability means: among images like val's (prevalence {val_prevalence:.2f}), this fraction had "
              f"pneumonia. This split's prevalence is {cal['prevalence']:.2f} and its mean probability "
              f"{cal['mean_probability']:.2f}. Where pneumonia is rarer or commoner, the probability is off by the "
              "ratio of the odds (`pneumonia.prediction.decision.at_prevalence` corrects it).", ""]
    return lines


def _subgroups(block: dict) -> list[str]:
    lines: list[str] = []
    sub = block["subgroups"]
    lines += [f"### Subgroups (at threshold {sub['at_threshold']:.3f}, chosen on val)", ""]
    rows = []
    for kind in ("view", "sex", "age"):
        for group, m in sub[kind].items():
            rows.append([f"{kind} {group}", m["n"], m["positives"], m["auroc"], m["sensitivity"], m["specificity"]])
    lines += table(["group", "n", "positives", "AUROC", "sensitivity", "specificity"], rows)
    fpr = sub["false_positive_rate_by_class"]
    lines += table(
        ["negatives", "n", "false-positive rate"],
        [[name.replace("_", " "), m["n"], m["fpr"]] for name, m in fpr.items()],
    )
    return lines


def ood_section(report: dict, split: str) -> list[str]:
    unlike = report["unlike_set"]
    flagged = report[split]["out_of_distribution"]
    lines = ["### Images unlike the training images", "",
             f"The guard refuses an image whose pooled features lie farther from the train split's than "
             f"{flagged['threshold']:.1f} (Mahalanobis; the 99th percentile of val's distances): such an image gets "
             f"no probability and no boxes. On {split}, {flagged['flagged']} of {report[split]['n']} images "
             f"({100 * flagged['flagged_rate']:.1f} %) were refused; of the unlike set made offline, "
             f"{unlike['caught']} of {unlike['n']} ({100 * unlike['rate']:.1f} %) were.", ""]
    lines += table(["unlike images", "n", "refused", "rate"],
                    [[f"{kind.replace('_', ' ')}: {m['what']}", m["n"], m["caught"], m["rate"]]
                     for kind, m in unlike["by_kind"].items()])
    return lines


def synthetic_banner(report: dict) -> list[str]:
    """The warning every page opens with when the models or the data are the phantom."""
    if not report.get("synthetic"):
        return []
    return [f"> **Synthetic data.** The models were {report['note']}. Every number below is measured on "
            "phantom images: it tests the pipeline, not clinical performance.", ""]


def localization_section(report: dict) -> list[str]:
    (split, block), = report.items()
    size = block["size_true_positives"]
    lines = [
        "## Localization by class activation maps (weakly supervised baseline)",
        "",
        f"Split **{split}** (the checkpoint was chosen on it). Boxes from the classifier's map, "
        f"regions above {block['cam_threshold']} of its maximum.",
        "",
    ]
    rows = [
        ["RSNA challenge score", block["rsna_score"]],
        ["pointing game", block["pointing_game"]],
    ]
    rows += [[f"IoBB accuracy, T = {k[1:].replace('p', '.')}", v] for k, v in block["iobb_accuracy"].items()]
    rows += [[f"IoU accuracy, T = {k[1:].replace('p', '.')}", v] for k, v in block["iou_accuracy"].items()]
    rows += [
        [f"size agreement on true positives (n = {size['n']}): Spearman", size["spearman"]],
        ["size agreement: mean absolute error of the area fraction", size["mean_absolute_error"]],
    ]
    return lines + table(["metric", "value"], rows)


def draw_figures(plots_dir: Path, out_dir: Path, classification: dict) -> list[tuple[str, str]]:
    """ROC, precision-recall, reliability and confusion matrix PNGs; returns (caption, file name) pairs."""
    split = classification["headline_split"]
    block = classification[split]
    roc = read_report(plots_dir / "roc.json")["roc"]
    pr = read_report(plots_dir / "precision_recall.json")["precision_recall"]
    points = read_report(plots_dir / "operating_points.json")["operating_points"]
    reliability = read_report(plots_dir / "reliability.json")["reliability"]
    prevalence = block["positive"] / block["n"]
    figures = []

    fig, ax = _axes()
    ax.plot([p["fpr"] for p in roc], [p["tpr"] for p in roc], label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", label="chance")
    _mark(ax, points, "fpr", "tpr")
    _finish(fig, ax, f"ROC ({split}), AUROC {block['auroc']:.3f}", "false-positive rate", "sensitivity")
    figures.append(_save(fig, out_dir, "roc.png", "ROC with the operating points"))

    fig, ax = _axes()
    ax.plot([p["recall"] for p in pr], [p["precision"] for p in pr], label="precision-recall")
    ax.axhline(prevalence, ls="--", c="grey", label=f"prevalence {prevalence:.2f}")
    _mark(ax, points, "recall", "precision")
    _finish(fig, ax, f"Precision-recall ({split}), AP {block['average_precision']:.3f}", "recall", "precision")
    figures.append(_save(fig, out_dir, "precision_recall.png", "Precision-recall with the operating points"))

    fig, ax = _axes()
    filled = [b for b in reliability if b["count"]]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", label="perfect calibration")
    xs, ys, counts = ([b[k] for b in filled] for k in ("mean_predicted", "observed_fraction", "count"))
    ax.plot(xs, ys, c="tab:blue", alpha=0.4, lw=1)
    # A bin of one or two images swings between 0 and 1: the marker's area and label say how many it holds.
    ax.scatter(xs, ys, s=[15 + 300 * c / max(counts) for c in counts], c="tab:blue", alpha=0.8,
               label=f"{classification['decision']['calibration']} calibration (area: images in the bin)")
    for x, y, c in zip(xs, ys, counts):
        ax.annotate(f"n={c}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    _finish(fig, ax, f"Reliability ({split})", "mean predicted probability", "observed fraction with pneumonia")
    ax.legend(loc="upper left", fontsize=7)  # the lower right holds the bins near 0 and their labels
    figures.append(_save(fig, out_dir, "reliability.png", "Reliability diagram"))

    sub = block["subgroups"]
    point = next(p for name, p in block["operating_points"].items() if p["threshold"] == sub["at_threshold"])
    matrix = [[point["tn"], point["fp"]], [point["fn"], point["tp"]]]
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=14,
                    color="white" if matrix[i][j] > max(map(max, matrix)) / 2 else "black")
    names = list(CLASS_NAMES)
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({split}), threshold {sub['at_threshold']:.3f}", fontsize=10)
    figures.append(_save(fig, out_dir, "confusion.png", "Confusion matrix at the target-sensitivity threshold"))
    return figures


def _axes():
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return fig, ax


def _mark(ax, points: list[dict], x: str, y: str) -> None:
    for p in points:
        if p[x] is None or p[y] is None:
            continue
        ax.plot(p[x], p[y], "o", ms=6)
        ax.annotate(point_label(p["name"]), (p[x], p[y]), textcoords="offset points", xytext=(6, -10), fontsize=8)


def _finish(fig, ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _save(fig, out_dir: Path, name: str, caption: str) -> tuple[str, str]:
    with atomic_path(out_dir / name) as tmp:
        # No creation date or version in the file: the same run gives the same bytes.
        fig.savefig(tmp, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return caption, name


def run(reports_dir: Path = Path("reports"), plots_dir: Path = Path("plots")) -> Path:
    """Write ``reports_dir/report.md`` and its figures from the reports and plot data; return its path."""
    dataset = read_report(reports_dir / "dataset.json")
    classification = read_report(reports_dir / "classification.json")
    localization = read_report(reports_dir / "localization.json")
    counts = dataset["counts"]
    lines = [
        "# Pneumonia detection: evaluation report",
        "",
        *synthetic_banner(classification),
        "Written by the `report` stage from `reports/*.json` (the full results) and `plots/` (plot data); "
        "`metrics/` holds the headline numbers that `dvc metrics diff` compares.",
        "",
        "## Data",
        "",
    ]
    lines += table(
        ["split", "patients", "pneumonia", "no pneumonia"],
        [[s, c["total"], c["positive"], c["negative"]] for s, c in counts.items() if c["total"]],
    )
    lines.append(f"Normalisation (train split, [0, 1] scale): mean {dataset['mean']:.4f}, std {dataset['std']:.4f}.")
    lines.append("")
    lines += classification_section(classification)
    figures = draw_figures(plots_dir, reports_dir / FIGURES, classification)
    lines += [f"![{caption}]({FIGURES}/{name})" for caption, name in figures] + [""]
    lines += localization_section(localization)
    detection = reports_dir / "detection.md"
    if detection.exists():  # the detector's own section, written by its stage (links relative to reports/)
        lines += ["", detection.read_text().strip(), ""]
    out = reports_dir / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return out
