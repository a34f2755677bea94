"""The README and the docs pages hold together: every relative link and image resolves, every page is reachable
from the README, and the tables that list the project's files list them all."""

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from pipeline_repo import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "reports" / "model_card.md"]
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_CODE = re.compile(r"(`+).+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def links(text: str) -> list[str]:
    """The targets of the inline links and images in Markdown ``text``, code spans and blocks left out."""
    return _LINK.findall(_CODE.sub("", _FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces as hyphens."""
    text = _CODE.sub(lambda m: m[0].strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).lower()  # a link in a heading: its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in ``text``; a repeated one also as GitHub numbers it (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page: Path):
    problems = []
    for target in links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = unquote(target).partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file} does not exist")
        elif not file.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_readme_links_every_docs_page_and_the_model_card():
    linked = {(ROOT / unquote(t).partition("#")[0]).resolve() for t in links((ROOT / "README.md").read_text())}
    missing = [p.relative_to(ROOT).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 160, f"README.md has {lines} lines: move the detail to a docs page"


def test_the_metrics_table_lists_every_headline_file():
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["metrics"]
    rows = re.findall(r"^\| `(metrics/[\w.]+)` \|", (ROOT / "docs" / "results.md").read_text(), re.M)
    assert rows == declared, "docs/results.md: the table of metrics files and keys differs from dvc.yaml's metrics"


def test_the_link_checker_finds_what_is_broken(tmp_path):
    """The checks can fail: a missing file, a missing heading; code spans and blocks are not links."""
    text = ("# A page\n## Undo a bad `-S`\n## Same\n## Same\n[ok](#undo-a-bad--s) [two](#same-1) [x](missing.md) "
            "`[not](a-link.md)`\n```\n[not](either.md)\n```\n![img](fig.png \"title\")\n")
    assert links(text) == ["#undo-a-bad--s", "#same-1", "missing.md", "fig.png"]
    assert anchors(text) == {"a-page", "undo-a-bad--s", "same", "same-1"}
    assert slug("The answer you read: one calibrated probability, boxes that agree with it, and refusals") == (
        "the-answer-you-read-one-calibrated-probability-boxes-that-agree-with-it-and-refusals")
    assert slug("Settings (`params.yaml`)") == "settings-paramsyaml"
