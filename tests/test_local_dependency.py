"""With download.source local, the user's folder or archive is a DVC dependency: changing it reruns download."""

import shutil
import zipfile

import pytest

from pneumonia.data.phantom.dataset import generate
from pipeline_repo import TINY_PARAMS, commit, make_repo, run

pytestmark = pytest.mark.slow  # the real `dvc repro download` in temporary repositories


def status(repo) -> str:
    return run(["dvc", "status", "download"], repo).stdout


def test_a_change_in_the_users_folder_reruns_download(tmp_path):
    data = tmp_path / "hospital" / "rsna"  # outside the repository, as a user's data usually is
    generate(data, patients=6, size=64, seed=1, workers=1)
    repo = make_repo(tmp_path / "repo", {**TINY_PARAMS, "download": {"source": "local", "path": str(data)}})
    run(["dvc", "repro", "download"], repo)
    commit(repo, "downloaded")
    assert "up to date" in status(repo)

    extra = data / "stage_2_train_images" / "extra.dcm"  # a DICOM added (unlabelled: listed and ignored)
    shutil.copy(next((data / "stage_2_train_images").glob("*.dcm")), extra)
    assert "changed deps" in status(repo) and str(data) in status(repo)
    out = run(["dvc", "repro", "download"], repo).stdout
    assert "Running stage 'download'" in out
    assert "extra" in (repo / "data/raw/unlabelled_dicoms.txt").read_text()

    extra.unlink()  # removed again
    assert "changed deps" in status(repo)
    run(["dvc", "repro", "download"], repo)
    assert "up to date" in status(repo)
    assert not (repo / "data/raw/unlabelled_dicoms.txt").exists()


def test_a_replaced_archive_reruns_download(tmp_path):
    folder = tmp_path / "rsna"
    generate(folder, patients=6, size=64, seed=1, workers=1)
    archive = tmp_path / "rsna.zip"

    def pack() -> None:
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder))

    pack()
    repo = make_repo(tmp_path / "repo", {**TINY_PARAMS, "download": {"source": "local", "path": str(archive)}})
    run(["dvc", "repro", "download"], repo)
    commit(repo, "downloaded")
    assert "up to date" in status(repo)
    generate(folder, patients=7, size=64, seed=2, workers=1)  # a new release of the archive
    pack()
    assert "changed deps" in status(repo)
    run(["dvc", "repro", "download"], repo)
    labels = (repo / "data/raw/stage_2_train_labels.csv").read_text().splitlines()
    assert len({line.split(",")[0] for line in labels[1:]}) == 7


def test_the_synthetic_default_depends_on_the_committed_placeholder_only(tmp_path):
    repo = make_repo(tmp_path / "repo")
    run(["dvc", "repro", "download"], repo)
    commit(repo, "downloaded")
    (repo / "unrelated.txt").write_text("x")
    assert "up to date" in status(repo)


def test_a_failed_download_keeps_the_previous_data(tmp_path):
    """download's data/raw persists across runs (DVC does not delete it first) and is swapped in only when complete."""
    repo = make_repo(tmp_path / "repo")
    run(["dvc", "repro", "download"], repo)
    commit(repo, "downloaded")
    before = {p.relative_to(repo): p.read_bytes() for p in sorted((repo / "data/raw").rglob("*")) if p.is_file()}
    broken = tmp_path / "broken"
    (broken / "stage_2_train_images").mkdir(parents=True)
    (broken / "stage_2_train_labels.csv").write_text("patientId;x;y;width;height;Target\n")  # semicolons
    params = (repo / "params.yaml").read_text().replace("source: synthetic", "source: local")
    (repo / "params.yaml").write_text(params.replace("path: local_data", f"path: {broken}"))
    failed = run(["dvc", "repro", "download"], repo, check=False)
    assert failed.returncode != 0 and "stage_2_train_labels.csv" in failed.stderr, failed.stderr
    after = {p.relative_to(repo): p.read_bytes() for p in sorted((repo / "data/raw").rglob("*")) if p.is_file()}
    assert after == before
