"""Rewrite each dvc.yaml stage's list of src/pneumonia modules to exactly what its script imports.

The closure is tests/test_dvc_deps.py's (the check this keeps green): every module of the package
the stage's script imports, directly or not. Only the stage's contiguous block of
``- src/pneumonia/...`` lines is replaced, so comments and the other deps stay as written.

    python scripts/stage_deps.py          # rewrite dvc.yaml, print what changed
    python scripts/stage_deps.py --check  # exit 1 when a stage's list is not exact
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_dvc_deps import stage_modules  # noqa: E402

STAGE = re.compile(r"^  (\w+):\n    cmd: python (stages/\w+\.py)\n", re.M)
MODULE_LINE = re.compile(r"^      - src/pneumonia/\S+\n", re.M)


def rewritten(text: str) -> tuple[str, list[str]]:
    """dvc.yaml's text with every stage's module block made exact, and one line per changed stage."""
    changes = []
    starts = [m for m in STAGE.finditer(text)]
    pieces, last = [], 0
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[match.start():end]
        lines = list(MODULE_LINE.finditer(body))
        if not lines:
            continue
        block = body[lines[0].start():lines[-1].end()]
        if block.count("\n") != len(lines):
            raise SystemExit(f"dvc.yaml: stage {match.group(1)}'s src/pneumonia lines are not contiguous; fix by hand")
        wanted = sorted(stage_modules(ROOT / match.group(2)))
        now = [line.strip()[2:] for line in block.splitlines()]
        if now != wanted:
            added, removed = sorted(set(wanted) - set(now)), sorted(set(now) - set(wanted))
            changes.append(f"{match.group(1)}: +{added} -{removed}")
        pieces += [text[last:match.start()], body[:lines[0].start()],
                   "".join(f"      - {path}\n" for path in wanted)]
        last = match.start() + lines[-1].end()
    pieces.append(text[last:])
    return "".join(pieces), changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when a list is not exact")
    args = parser.parse_args()
    path = ROOT / "dvc.yaml"
    text, changes = rewritten(path.read_text())
    print("\n".join(changes) or "every stage lists exactly the modules it imports")
    if args.check:
        sys.exit(1 if changes else 0)
    path.write_text(text)


if __name__ == "__main__":
    main()
