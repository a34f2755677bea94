"""The pull-request comment: the headline metric diff against a base commit, read in ten seconds.

``python -m pneumonia.pr_report BASE`` (or ``scripts/pr_report.sh BASE``) prints
Markdown, at most about 40 lines: each changed headline metric (``dvc metrics
diff``) with its base and new value, marked **outside** when the new value lies
outside the base's bootstrap 95 % interval and "within noise" when inside it,
then the params diff (``dvc params diff``) and where the full report and plots are.
The intervals come from the base commit's full reports (``git show BASE:reports/…``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Callable

MAX_PARAM_ROWS = 10

# Readable names for the headline keys (metrics/*.json); unknown keys are shown as file:key.
LABELS = {
    "metrics/dataset.json": {"train": "patients in train", "val": "patients in val", "test": "patients in test"},
    "metrics/classifier.json": {
        "auroc": "image-level AUROC (the decision predict prints)", "auroc_low": "image-level AUROC, 95 % CI low",
        "auroc_high": "image-level AUROC, 95 % CI high", "ap": "image-level average precision",
        "sens": "sensitivity (label threshold chosen on val)",
        "spec": "specificity (label threshold chosen on val)",
        "brier": "Brier score (lower is better)", "ece": "ECE, 15 bins (lower is better)",
        "ood_flag": "test images refused as unlike the training images (lower is better)",
        "ood_catch": "unlike images refused (higher is better)",
    },
    "metrics/cam.json": {"rsna_score": "CAM baseline RSNA score (val)", "size_spearman": "CAM size agreement (Spearman)"},
    "metrics/detection.json": {
        "rsna_score": "detector RSNA score", "ap50": "detector AP@0.5",
        "auroc": "image AUROC of the decision gating the boxes", "size_spearman": "detector size agreement (Spearman)",
        "area_mae": "detector area error (fraction of image, lower is better)",
    },
}


def _classifier_intervals(report: dict) -> dict[str, dict]:
    """The bootstrap intervals of classifier.json's keys, from reports/classification.json."""
    block = report[report["headline_split"]]
    point = block["operating_points"].get(report.get("headline_operating_point", ""), {}).get("ci95", {})
    calibration = block.get("calibration", {})
    return {"auroc": block["ci95"]["auroc"], "ap": block["ci95"]["average_precision"],
            "sens": point.get("sensitivity"), "spec": point.get("specificity"),
            "brier": calibration.get("brier_ci95"), "ece": calibration.get("ece_15_bins_ci95")}


def _detection_intervals(report: dict) -> dict[str, dict]:
    """detection.json's intervals, from reports/detection.json: the image AUROC of the gate, the RSNA score."""
    return {"auroc": report["test"]["image_auroc"][report["image_score"]["gate"]]["ci95"],
            "rsna_score": report["test"]["detector"].get("rsna_score_ci95")}


# headline file -> (its full report in reports/, the function reading the intervals of its keys from it)
INTERVALS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "metrics/classifier.json": ("reports/classification.json", _classifier_intervals),
    "metrics/detection.json": ("reports/detection.json", _detection_intervals),
}


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"pr_report: error: `{' '.join(args)}`: {message}")
    return result.stdout


def _git_json(base: str, path: str) -> Any:
    result = subprocess.run(["git", "show", f"{base}:{path}"], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else None


def base_intervals(base: str) -> dict[str, dict[str, dict]]:
    """{headline file: {key: {"low", "high"}}} from the base commit's reports (empty where it has none)."""
    found = {}
    for path, (report_path, read) in INTERVALS.items():
        report = _git_json(base, report_path)
        try:
            found[path] = {k: v for k, v in read(report).items() if v and v.get("low") is not None} if report else {}
        except (KeyError, TypeError, AttributeError):  # a base from before these reports: no intervals
            found[path] = {}
    return found


def _number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def metric_rows(diff: dict, intervals: dict) -> list[str]:
    rows = []
    for path, changes in diff.items():
        for key, change in changes.items():
            old, new = change.get("old"), change.get("new")
            label = LABELS.get(path, {}).get(key, f"{path}:{key}")
            delta = change.get("diff")
            ci = intervals.get(path, {}).get(key)
            if ci is None or not isinstance(new, (int, float)):
                mark = ""
            elif ci["low"] <= new <= ci["high"]:
                mark = f"within noise (base 95 % CI {ci['low']:.3f}–{ci['high']:.3f})"
            else:
                mark = f"**outside** base 95 % CI {ci['low']:.3f}–{ci['high']:.3f}"
            sign = "" if not isinstance(delta, (int, float)) else ("+" if delta > 0 else "")
            rows.append(f"| {label} | {_number(old)} | {_number(new)} | {sign}{_number(delta)} | {mark} |")
    return rows


def param_rows(diff: dict) -> list[str]:
    rows = [
        f"| `{key}` | {change.get('old')} | {change.get('new')} |"
        for changes in diff.values() for key, change in changes.items()
    ]
    if len(rows) > MAX_PARAM_ROWS:
        rows = rows[:MAX_PARAM_ROWS] + [f"| … and {len(rows) - MAX_PARAM_ROWS} more (`dvc params diff`) | | |"]
    return rows


def report(base: str) -> str:
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
                      capture_output=True).returncode != 0:
        raise SystemExit(f"pr_report: error: '{base}' is not a commit here; fetch it first")
    short = _run(["git", "rev-parse", "--short", base]).strip()
    metrics = json.loads(_run(["dvc", "metrics", "diff", base, "--json"]) or "{}")
    params = json.loads(_run(["dvc", "params", "diff", base, "--json"]) or "{}")
    lines = [f"## Pipeline report against `{short}` ({base})", ""]
    rows = metric_rows(metrics, base_intervals(base))
    if rows:
        lines += ["| headline metric | base | this branch | change | against the base's interval |",
                  "|---|---|---|---|---|", *rows]
    else:
        lines.append("No headline metric changed.")
    lines.append("")
    rows = param_rows(params)
    lines += ["| param | base | this branch |", "|---|---|---|", *rows] if rows else ["No param changed."]
    lines += [
        "",
        "<sub>Full results: `reports/report.md` of this branch; plots: `dvc plots diff "
        f"{base}`. An interval is the base's bootstrap 95 % CI on its headline split: a change inside it is "
        "the size of resampling noise. Metrics are on phantom data unless the workflow pulled real data.</sub>",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pneumonia.pr_report BASE (e.g. origin/main)", file=sys.stderr)
        return 2
    try:
        print(report(argv[0]))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
