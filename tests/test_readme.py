"""The generated blocks of the README and the docs pages match their sources: params.yaml, the committed metrics and
reports, the benchmark results."""

from pathlib import Path

import pytest

from scripts import readme
from pipeline_repo import ROOT

DOCUMENTS = readme.documents(ROOT)


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return readme.blocks(ROOT)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_block_is_up_to_date(path: Path, generated):
    text = path.read_text()
    assert readme.render(text, generated, path.name) == text, f"{path.relative_to(ROOT)} is stale: run `make readme` and commit"


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
