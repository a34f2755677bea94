#!/usr/bin/env bash
# Markdown for a pull request: the headline metrics and params against BASE (a branch, tag or commit),
# each metric change marked against the base's 95 % interval. At most about 40 lines.
# Usage: scripts/pr_report.sh BASE   (run in the repository, after `dvc repro` or `dvc pull`)
set -euo pipefail
# scripts/ is a package of developer tools beside src/, not installed: put this checkout's root on the path.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec python -m scripts.pr_report "${1:?usage: scripts/pr_report.sh BASE (e.g. origin/main)}"
