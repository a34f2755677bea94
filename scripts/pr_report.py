"""The pull-request comment: the headline metric diff against a base commit, read in ten seconds.

``python -m scripts.pr_report BASE`` (or ``scripts/pr_report.sh BASE``) prints
Markdown, at most about 40 lines: each changed headline metric (``dvc metrics
diff``), grouped by model, with its base and new value and a verdict from
:mod:`scripts.noise` (the same judge as ``make compare``: the wider of the
base's bootstrap interval and the training noise of the base's seed spread),
then the params diff (``dvc params diff``) and where the full report and plots are.
"""

from __future__ import annotations

import json
import subprocess
import sys

from scripts.noise import SEED_SPREAD, judged, markdown

MAX_PARAM_ROWS = 10


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"pr_report: error: `{' '.join(args)}`: {message}")
    return result.stdout


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
    params = json.loads(_run(["dvc", "params", "diff", base, "--json"]) or "{}")
    lines = [f"## Pipeline report against `{short}` ({base})", ""]
    judged_rows = judged(base, everything=False)
    lines += markdown(judged_rows, "this branch") if judged_rows else ["No headline metric changed."]
    lines.append("")
    rows = param_rows(params)
    lines += ["| param | base | this branch |", "|---|---|---|", *rows] if rows else ["No param changed."]
    lines += [
        "",
        "<sub>Full results: `reports/report.md` of this branch; plots: `dvc plots diff "
        f"{base}`. A verdict's interval is the wider of the base's bootstrap 95 % CI on its headline split and "
        f"the 95 % band of training noise in the base's `{SEED_SPREAD}` (another seed, another CPU); counts "
        "must match exactly. Metrics are on phantom data unless the workflow pulled real data.</sub>",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m scripts.pr_report BASE (e.g. origin/main)", file=sys.stderr)
        return 2
    try:
        print(report(argv[0]))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
