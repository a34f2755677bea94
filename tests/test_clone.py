"""A shared DVC cache: push, pull into a fresh clone in another folder, and rerun there to the same bytes.

Its own file, so pytest-xdist (``--dist loadfile``) runs it beside test_pipeline.py, not after it.
"""

import pytest

from pipeline_repo import ROOT, baseline_repo, run, session_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(tmp_path, tmp_path_factory):
    return baseline_repo(tmp_path / "repo", session_folder(tmp_path_factory))


def test_shared_cache_push_pull_and_a_fresh_clone_reproduces_nothing(repo, tmp_path):
    clone = tmp_path / "clone"
    # docs/scaling.md's recipe, line by line as written; only the folders are this test's, and the clone
    # uses this environment rather than building its own with `make setup`.
    page = (ROOT / "docs" / "scaling.md").read_text()
    recipe = page.split("To share data and models:\n\n```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in recipe.strip().splitlines()]
    assert len(lines) == 4 and lines[0].startswith("dvc remote add -d shared /mnt/shared/dvc-cache"), lines
    for line in lines[:3]:
        run(["bash", "-c", line.replace("/mnt/shared/dvc-cache", str(tmp_path / "remote"))], repo)
    clone_line = (lines[3].replace("REPOSITORY", str(repo)).replace("CLONE", str(clone))
                  .replace("make setup && .venv/bin/dvc pull", "dvc pull"))
    run(["bash", "-c", clone_line], tmp_path)
    assert (clone / "models/classifier.safetensors").exists() and (clone / "data/processed/train.npy").exists()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout

    # Rerunning everything in the clone, another folder, writes the same bytes: dvc.lock, metrics,
    # reports and plots are unchanged in git (no path or date inside any output, the model file included).
    run(["dvc", "repro", "--force"], clone)
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
