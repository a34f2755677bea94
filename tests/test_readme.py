"""The generated blocks of the README and the docs pages match their sources: params.yaml, the committed metrics and
reports, the benchmark results.

Where the workspace holds a run of its own (`make repro` on another CPU writes results equal within noise, not to the
last digit), a stale block is no mistake in the commit: the check skips, saying how to regenerate the documents."""

import subprocess
from pathlib import Path

import pytest

from scripts import readme
from pipeline_repo import ROOT, commit, run

DOCUMENTS = readme.documents(ROOT)
# What the generated blocks are made from (scripts/readme.py's blocks()).
SOURCES = ("params.yaml", "metrics", "reports", "benchmarks")


def workspace_differs(root: Path) -> list[str] | None:
    """The tracked files of :data:`SOURCES` that differ from ``root``'s commit; None where ``root`` is not a git checkout.

    Untracked files are left out: every file the blocks read is tracked, and a new script in benchmarks/ feeds none.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True)

    try:
        top = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:  # no git on this machine
        return None
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != Path(root).resolve():
        return None  # not a checkout, or a folder inside another repository's
    status = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCES)
    if status.returncode != 0:
        return None
    return [line[3:] for line in status.stdout.splitlines()]


def check_document(path: Path, generated: dict[str, str], root: Path) -> None:
    """Fail on a stale block of ``path``, unless its sources in ``root`` are the workspace's own run: then skip."""
    text = path.read_text()
    rendered = readme.render(text, generated, path.name)
    if rendered != text and (differing := workspace_differs(root)):
        shown = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
        pytest.skip(f"the workspace's own run differs from the committed metrics ({shown}): "
                    "run `make readme` to regenerate the documents from it")
    assert rendered == text, f"{path.relative_to(root)} is stale: run `make readme` and commit"


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return readme.blocks(ROOT)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_block_is_up_to_date(path: Path, generated):
    check_document(path, generated, ROOT)


def _sources_repo(path: Path) -> Path:
    """A git repository holding a metrics file, a script in benchmarks/ and a document with one block, committed."""
    (path / "metrics").mkdir(parents=True)
    (path / "benchmarks").mkdir()
    (path / "metrics" / "cam.json").write_text('{"rsna_score": 0.25}\n')
    (path / "benchmarks" / "run.py").write_text("")
    (path / "README.md").write_text("<!-- generated:headline -->\nRSNA 0.25\n<!-- /generated:headline -->\n")
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    commit(path, "sources")
    return path


def test_a_stale_document_fails_on_the_committed_sources_and_skips_on_the_workspaces_own(tmp_path):
    """The check can fail: a clean checkout with a stale document fails; the same after a run of one's own skips."""
    repo = _sources_repo(tmp_path / "repo")
    document, fresh, stale = repo / "README.md", {"headline": "RSNA 0.25\n"}, {"headline": "RSNA 0.26\n"}
    assert workspace_differs(repo) == []
    check_document(document, fresh, repo)
    with pytest.raises(AssertionError, match="README.md is stale: run `make readme` and commit"):
        check_document(document, stale, repo)

    (repo / "benchmarks" / "real_data.py").write_text("")  # untracked, and no block reads it: still fails
    (repo / "README.md").write_text((repo / "README.md").read_text() + "more\n")  # not a source
    assert workspace_differs(repo) == []
    with pytest.raises(AssertionError, match="is stale"):
        check_document(document, stale, repo)

    (repo / "metrics" / "cam.json").write_text('{"rsna_score": 0.26}\n')  # `make repro` on another CPU
    assert workspace_differs(repo) == ["metrics/cam.json"]
    with pytest.raises(pytest.skip.Exception, match=r"^the workspace's own run differs from the committed metrics "
                       r"\(metrics/cam.json\): run `make readme` to regenerate the documents from it$"):
        check_document(document, stale, repo)
    check_document(document, fresh, repo)  # an up-to-date document passes whatever the workspace holds

    (repo / "plain").mkdir()
    assert workspace_differs(repo / "plain") is None  # inside a repository, not its root
    (tmp_path / "copy").mkdir()
    assert workspace_differs(tmp_path / "copy") is None  # no repository: asserted as on a clean checkout


def test_every_block_is_shown_once_and_the_readme_shows_the_headline(generated):
    shown = {path.relative_to(ROOT).as_posix(): readme.block_names(path.read_text()) for path in DOCUMENTS}
    names = [name for names in shown.values() for name in names]
    assert sorted(names) == sorted(generated), f"each generated block in exactly one file: {shown}"
    assert shown["README.md"] == ["headline"]
    assert shown["docs/settings.md"] == ["params"] and "trust" in shown["docs/predict.md"]


def test_the_settings_table_lists_every_key_of_params_yaml_with_its_value():
    rows = readme.params_rows((ROOT / "params.yaml").read_text())
    keys = [key for key, _, _ in rows]
    assert "split.test_size" in keys and "download.phantom.patients" in keys and len(keys) == len(set(keys))
    assert all(comment for _, _, comment in rows), [key for key, _, c in rows if not c]


def test_a_changed_default_makes_the_settings_page_stale(tmp_path, generated):
    """The check can fail: a value changed in params.yaml is a page that no longer matches."""
    params = (ROOT / "params.yaml").read_text()
    changed = tmp_path / "params.yaml"
    changed.write_text(params.replace("max_epochs: 8 ", "max_epochs: 9 ", 1))
    text = (ROOT / "docs" / "settings.md").read_text()
    with_change = generated | {"params": readme.params_block(changed)}
    assert readme.render(text, with_change) != text
    assert "| `train.max_epochs` | `9` |" in readme.render(text, with_change)


def test_main_fills_the_blocks_of_every_file(tmp_path, generated, monkeypatch):
    """`make readme` rewrites a stale block wherever it is, in the README or a docs page, and leaves the rest."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("intro\n<!-- generated:headline -->\nold\n<!-- /generated:headline -->\nend\n")
    (tmp_path / "docs" / "a.md").write_text("# A\n<!-- generated:params -->\n<!-- /generated:params -->\n")
    (tmp_path / "docs" / "b.md").write_text("# B, no block\n")
    monkeypatch.setattr(readme, "blocks", lambda root: generated)
    assert readme.main([str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == f"intro\n<!-- generated:headline -->\n{generated['headline']}<!-- /generated:headline -->\nend\n"
    assert generated["params"] in (tmp_path / "docs" / "a.md").read_text()
    assert (tmp_path / "docs" / "b.md").read_text() == "# B, no block\n"


def test_an_unknown_block_is_refused_naming_its_file():
    with pytest.raises(SystemExit, match="docs/x.md has a block 'nope' that nothing generates"):
        readme.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->\n", {}, "docs/x.md")


def test_the_full_run_plan_adds_the_rehearsal_stages_at_the_reference_epochs():
    stages = [{"stage": name, "seconds": seconds} for name, seconds in
              (("download", 1800), ("dicom_to_npy", 100), ("compute_stats", 20), ("train", 600), ("detect", 1200),
               ("decide", 200), ("evaluate", 150), ("localize", 100), ("evaluate_detection", 300), ("report", 50))]
    rehearsal = {"stages": stages, "train": {"full_epoch_stage_estimate_s": 3600}}
    detector, plan = readme.rehearsal_plan(rehearsal, detect_epochs=10)
    assert "1200 s" in detector
    # data 1920 s, train 35 h, detect 10 x 1200 s, the rest 800 s: 126,000 + 12,000 + 2,720 s = 39.1 h
    assert "0.5 h" in plan and "35.0 h" in plan and "3.3 h" in plan and "0.2 h" in plan and "about 39.1 h" in plan
    assert readme.rehearsal_plan({"stages": stages[:4], "train": rehearsal["train"]}) == []
