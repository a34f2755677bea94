#!/usr/bin/env bash
# Markdown for a pull request: what the metrics and params did against BASE (a branch, tag or commit).
# Usage: scripts/pr_report.sh BASE   (run in the repository, after `dvc repro` or `dvc pull`)
set -euo pipefail
base="${1:?usage: scripts/pr_report.sh BASE (e.g. origin/main)}"
git rev-parse --verify --quiet "$base^{commit}" >/dev/null || { echo "pr_report: error: '$base' is not a commit here; fetch it first" >&2; exit 1; }

echo "## Pipeline report against \`$(git rev-parse --short "$base")\` ($base)"
echo
echo "### Metrics"
echo
metrics=$(dvc metrics diff "$base" --md --precision 4)
echo "${metrics:-No metric changed.}"
echo
echo "### Params"
echo
params=$(dvc params diff "$base" --md)
echo "${params:-No param changed.}"
echo
echo "<sub>Plots: \`dvc plots diff $base\`. Metrics on phantom data unless the workflow pulled real data.</sub>"
