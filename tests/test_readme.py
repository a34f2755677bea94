"""The README's generated blocks match their sources: params.yaml and the committed headline metrics."""

import re
from pathlib import Path

import pytest

from pneumonia import readme
from pipeline_repo import ROOT


def test_every_generated_block_is_up_to_date():
    text = (ROOT / "README.md").read_text()
    assert sorted(re.findall(r"<!-- generated:(\w+) -->", text)) == ["architectures", "bench", "metrics", "params", "rehearsal", "trust"]
    assert readme.render(text, readme.blocks(ROOT)) == text, "README.md is stale: run `make readme` and commit"


def test_the_settings_table_lists_every_key_of_params_yaml_with_its_value():
    rows = readme.params_rows((ROOT / "params.yaml").read_text())
    keys = [key for key, _, _ in rows]
    assert "split.test_size" in keys and "download.phantom.patients" in keys and len(keys) == len(set(keys))
    assert all(comment for _, _, comment in rows), [key for key, _, c in rows if not c]


def test_a_changed_default_makes_the_readme_stale(tmp_path):
    """The check can fail: a value changed in params.yaml is a README that no longer matches."""
    params = (ROOT / "params.yaml").read_text()
    changed = tmp_path / "params.yaml"
    changed.write_text(params.replace("max_epochs: 8 ", "max_epochs: 9 ", 1))
    text = (ROOT / "README.md").read_text()
    generated = readme.blocks(ROOT) | {"params": readme.params_block(changed)}
    assert readme.render(text, generated) != text
    assert "| `train.max_epochs` | `9` |" in readme.render(text, generated)


def test_an_unknown_block_is_refused():
    with pytest.raises(SystemExit, match="block 'nope' that nothing generates"):
        readme.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->\n", {})


def test_every_image_the_readme_shows_is_committed():
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert images, "the README shows at least the ROC figure"
    for path in images:
        assert (ROOT / path).is_file(), f"README shows {path}, which does not exist"
