"""Is a headline metric's change noise? One judge for ``make compare`` and the pull-request report.

A run's headline number moves for two reasons besides a real change: the test images are a sample
(the bootstrap 95 % interval in the base commit's reports), and training itself is noisy (another
seed, or another CPU's instruction set, gives other weights). The second is measured once by
``benchmarks/seed_spread.py``: the default run over several training seeds, same data. A change is
"within noise" when the new value lies inside the WIDER of

- the base's bootstrap 95 % interval (where its report has one), and
- base ± ``t(0.975, n-1) * sd * sqrt(2)``, the 95 % band of the difference between two runs whose
  metric has the seeds' standard deviation ``sd`` (n seeds).

A number with neither (a count of patients, whose seeds all agree) must be equal. Every row gets a
verdict; rows are grouped by model in :data:`METRIC_FILES`' order.

Both sides are read from git and DVC: the base's reports and seed spread with ``git show BASE:…``,
the change with ``dvc metrics diff BASE`` (the workspace when run without a target commit).
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

from pneumonia.reporting.report import fmt, interval

# The headline files, in the order a reader meets them (the data, the answer predict prints, the
# detector's boxes, the CAM baseline), each key with the label a reviewer reads.
LABELS: dict[str, dict[str, str]] = {
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
    "metrics/detection.json": {
        "rsna_score": "detector RSNA score", "ap50": "detector AP@0.5",
        "auroc": "image AUROC of the decision gating the boxes", "size_spearman": "detector size agreement (Spearman)",
        "area_mae": "detector area error (fraction of image, lower is better)",
    },
    "metrics/cam.json": {"rsna_score": "CAM baseline RSNA score (val)", "size_spearman": "CAM size agreement (Spearman)"},
}
METRIC_FILES = tuple(LABELS)
GROUPS = {"metrics/dataset.json": "data", "metrics/classifier.json": "image-level decision",
          "metrics/detection.json": "detector", "metrics/cam.json": "CAM baseline"}
SEED_SPREAD = "benchmarks/seed_spread.json"


# --------------------------------------------------------------------------- the seed spread


def spread_summary(samples: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict]]:
    """{file: {key: {n, mean, sd, min, max, band95}}} over runs' headline metrics (``band95``: the 95 % band
    of the difference between two runs, ``t(0.975, n-1) * sd * sqrt(2)``; None under two runs)."""
    summary: dict[str, dict[str, dict]] = {}
    for path in METRIC_FILES:
        keys = dict.fromkeys(k for sample in samples for k in sample.get(path, {}))
        for key in keys:
            values = np.array([s[path][key] for s in samples if s.get(path, {}).get(key) is not None], np.float64)
            if not len(values):
                continue
            n, sd = len(values), float(values.std(ddof=1)) if len(values) > 1 else None
            summary.setdefault(path, {})[key] = {
                "n": n, "mean": float(values.mean()), "sd": sd, "min": float(values.min()), "max": float(values.max()),
                "band95": None if sd is None else float(stats.t.ppf(0.975, n - 1) * sd * math.sqrt(2)),
            }
    return summary


# --------------------------------------------------------------------------- the base's intervals


def _classifier_intervals(report: dict) -> dict[str, dict]:
    """The bootstrap intervals of classifier.json's keys, from reports/classification.json."""
    block = report[report["headline_split"]]
    point = block["operating_points"].get(report.get("headline_operating_point", ""), {}).get("ci95", {})
    calibration = block.get("calibration", {})
    return {"auroc": block["ci95"]["auroc"], "ap": block["ci95"]["average_precision"],
            "sens": point.get("sensitivity"), "spec": point.get("specificity"),
            "brier": calibration.get("brier_ci95"), "ece": calibration.get("ece_15_bins_ci95")}


def _detection_intervals(report: dict) -> dict[str, dict]:
    """detection.json's intervals, from reports/detection.json: the gate's image AUROC, the RSNA score, AP@0.5."""
    block = report[report.get("headline_split", "test")]  # reports older than the val-only headline have none
    detector = block["detector"]
    return {"auroc": block["image_auroc"][report["image_score"]["gate"]]["ci95"],
            "rsna_score": detector.get("rsna_score_ci95"), "ap50": detector.get("ap50_ci95")}


# headline file -> (its full report, the function reading the bootstrap intervals of its keys from it)
BOOTSTRAP: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "metrics/classifier.json": ("reports/classification.json", _classifier_intervals),
    "metrics/detection.json": ("reports/detection.json", _detection_intervals),
}


def git_json(commit: str, path: str) -> Any:
    """A JSON file as committed in ``commit``; None where it has none."""
    result = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else None


def bootstrap_intervals(commit: str) -> dict[str, dict[str, dict]]:
    """{headline file: {key: {"low", "high"}}} from ``commit``'s reports (empty where it has none)."""
    found = {}
    for path, (report_path, read) in BOOTSTRAP.items():
        report = git_json(commit, report_path)
        try:
            found[path] = {k: v for k, v in read(report).items() if v and v.get("low") is not None} if report else {}
        except (KeyError, TypeError, AttributeError):  # a base from before these reports: no intervals
            found[path] = {}
    return found


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Row:
    group: str
    label: str
    base: float | None
    new: float | None
    low: float | None  # the interval the new value is judged against (None: must equal the base)
    high: float | None
    verdict: str  # "within noise", "outside", "same", "changed", "new", "removed"

    @property
    def outside(self) -> bool:
        return self.verdict in ("outside", "changed")


def noise_interval(base: float, bootstrap: dict | None, spread: dict | None) -> tuple[float, float] | None:
    """The wider of the base's bootstrap interval and base ± the seeds' band; None when neither exists."""
    bounds = []
    if bootstrap:
        bounds.append((bootstrap["low"], bootstrap["high"]))
    if spread and spread.get("band95") is not None and spread["band95"] > 0:
        bounds.append((base - spread["band95"], base + spread["band95"]))
    if not bounds:
        return None
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def judge(diff: dict, bootstrap: dict, spread: dict) -> list[Row]:
    """One row per numeric headline key of ``dvc metrics diff --json``, grouped and ordered by
    :data:`LABELS`, each with its verdict."""
    rows = []
    ordered = [p for p in METRIC_FILES if p in diff] + sorted(p for p in diff if p not in LABELS)
    for path in ordered:
        keys = list(LABELS.get(path, {}))
        keys = [k for k in keys if k in diff[path]] + sorted(k for k in diff[path] if k not in keys)
        for key in keys:
            old, new = _number(diff[path][key].get("old")), _number(diff[path][key].get("new"))
            if old is None and new is None:
                continue  # a string (the split's name)
            label = LABELS.get(path, {}).get(key, f"{path}:{key}")
            group = GROUPS.get(path, path)
            if old is None or new is None:
                rows.append(Row(group, label, old, new, None, None, "new" if old is None else "removed"))
                continue
            interval = noise_interval(old, bootstrap.get(path, {}).get(key), spread.get(path, {}).get(key))
            if interval is None:
                rows.append(Row(group, label, old, new, None, None, "same" if new == old else "changed"))
            else:
                low, high = interval
                # rounded headline values: a new value at the interval's edge to 3 decimals is inside
                inside = round(low, 3) <= new <= round(high, 3)
                rows.append(Row(group, label, old, new, low, high, "within noise" if inside else "outside"))
    return rows


def markdown(rows: list[Row], new_name: str) -> list[str]:
    """A table grouped by model; a group's name heads its first row."""
    lines = [f"| model | headline metric | base | {new_name} | change | verdict (base's 95 % noise interval) |",
             "|---|---|---|---|---|---|"]
    shown = None
    for row in rows:
        change = "" if row.base is None or row.new is None else (
            f"{row.new - row.base:+d}" if isinstance(row.new - row.base, int) else f"{row.new - row.base:+.3f}")
        if row.verdict in ("within noise", "outside"):
            verdict = f"{'**outside**' if row.outside else 'within noise'} ({interval({'low': row.low, 'high': row.high})})"
        else:
            verdict = {"same": "same (exact)", "changed": "**changed** (must be exact)"}.get(row.verdict, row.verdict)
        group = row.group if row.group != shown else ""
        shown = row.group
        lines.append(f"| {group} | {row.label} | {fmt(row.base)} | {fmt(row.new)} | {change} | {verdict} |")
    return lines


def metrics_diff(base: str, everything: bool) -> dict:
    """``dvc metrics diff BASE --json`` (``--all``: unchanged keys too) against the workspace."""
    args = ["dvc", "metrics", "diff", base, "--json"] + (["--all"] if everything else [])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"error: `{' '.join(args)}`: {message}")
    return json.loads(result.stdout or "{}")


def judged(base: str, everything: bool) -> list[Row]:
    """The workspace's headline metrics against ``base``'s, each judged against its noise."""
    spread = (git_json(base, SEED_SPREAD) or {}).get("spread", {})
    return judge(metrics_diff(base, everything), bootstrap_intervals(base), spread)


def main(argv: list[str] | None = None) -> int:
    """``make compare``: every headline metric of the workspace beside the committed run's; exit 1 when one is
    outside its noise."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    base = argv[0] if argv else "HEAD"
    try:
        rows = judged(base, everything=True)
    except SystemExit as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"compare: error: no headline metrics in the workspace or in {base}; run `dvc repro` first",
              file=sys.stderr)
        return 2
    print(f"## This workspace's run against the committed run ({base})\n")
    print("\n".join(markdown(rows, "this run")))
    outside = [row.label for row in rows if row.outside]
    has_spread = git_json(base, SEED_SPREAD) is not None
    print("\n" + ("Training noise from " + SEED_SPREAD if has_spread else f"No {SEED_SPREAD} in {base}: bootstrap only")
          + "; bootstrap intervals from the committed reports.")
    print(f"**{len(outside)} outside noise**: {', '.join(outside)}" if outside
          else "Every headline metric is within noise of the committed run.")
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
