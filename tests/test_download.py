"""The download stage's library: local zip/folder, safe extraction, validation, Kaggle credentials."""

import io
import os
import stat
import sys
import types
import zipfile
from pathlib import Path

import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pneumonia.data import download, rsna
from pneumonia.data.kaggle_source import check_kaggle_credentials
from pneumonia.core.errors import CredentialsError, DatasetError, PneumoniaError
from project_params import project_params

LABELS = """\
patientId,x,y,width,height,Target
p0,,,,,0
p1,10.0,20.0,30.0,40.0,1
p1,50.0,60.0,30.0,40.0,1
p2,,,,,0
"""
CLASSES = "patientId,class\np0,Normal\np1,Lung Opacity\np1,Lung Opacity\np2,Normal\n"
PATIENTS = ("p0", "p1", "p2")


def tiny_dicom(patient_id: str) -> bytes:
    """An uncompressed 8×8 8-bit DICOM, enough to stand for an RSNA image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rsna_files(images=PATIENTS, labels=LABELS) -> dict[str, bytes]:
    """An RSNA layout as {relative path: content}, with extras the pipeline does not need."""
    files = {
        rsna.LABELS_CSV: labels.encode(),
        rsna.CLASSES_CSV: CLASSES.encode(),
        "stage_2_sample_submission.csv": b"patientId,PredictionString\n",
        "stage_2_test_images/t0.dcm": tiny_dicom("t0"),
    }
    for pid in images:
        files[f"{rsna.IMAGES_DIR}/{pid}.dcm"] = tiny_dicom(pid)
    return files


def write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(prefix + name, content)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def local(path: Path):
    return project_params({"download": {"source": "local", "path": str(path)}}).download


def assert_rsna_raw_dir(raw_dir: Path, patients=PATIENTS) -> None:
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted([rsna.CLASSES_CSV, rsna.IMAGES_DIR, rsna.LABELS_CSV])
    assert sorted(p.name for p in (raw_dir / rsna.IMAGES_DIR).iterdir()) == sorted(f"{p}.dcm" for p in patients)
    assert [p.patient_id for p in rsna.read_patients(raw_dir)] == list(patients)


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def error_message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("prefix", ["", "rsna-pneumonia-detection-challenge/"])
def test_local_zip(tmp_path, prefix):
    archive = write_zip(tmp_path / "rsna.zip", rsna_files(), prefix=prefix)
    raw_dir = tmp_path / "data" / "raw"
    report = download.run(local(archive), seed=0, raw_dir=raw_dir)
    assert report == download.DownloadReport("local", patients=3, positives=1, images=3, unlabelled=())
    assert_rsna_raw_dir(raw_dir)
    assert (raw_dir / rsna.IMAGES_DIR / "p1.dcm").read_bytes()[128:132] == b"DICM"
    assert no_leftovers(raw_dir.parent)
    assert "3 patients" in report.summary() and "\n" not in report.summary()


def test_local_folder_is_left_untouched(tmp_path):
    files = rsna_files()
    source = write_folder(tmp_path / "rsna", files)
    raw_dir = tmp_path / "raw"
    report = download.run(local(source), seed=0, raw_dir=raw_dir)
    assert (report.patients, report.positives, report.images) == (3, 1, 3)
    assert_rsna_raw_dir(raw_dir)
    for name, content in files.items():
        assert (source / name).read_bytes() == content
        # copies, not hard links: DVC's cache may make its files read-only, and the user's must stay theirs
        if (raw_dir / name).exists():
            assert (source / name).stat().st_ino != (raw_dir / name).stat().st_ino


def test_zip_slip_member_refused(tmp_path):
    files = rsna_files()
    files["../evil.txt"] = b"owned"
    archive = write_zip(tmp_path / "evil.zip", files)
    raw_dir = tmp_path / "out" / "raw"
    with pytest.raises(DatasetError, match=r"\.\./evil\.txt") as info:
        download.run(local(archive), seed=0, raw_dir=raw_dir)
    error_message(info)
    assert not raw_dir.exists()
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_absolute_member_refused(tmp_path):
    files = rsna_files()
    files["/tmp/evil.txt"] = b"owned"
    archive = write_zip(tmp_path / "evil.zip", files)
    with pytest.raises(DatasetError, match="/tmp/evil.txt.*absolute") as info:
        download.run(local(archive), seed=0, raw_dir=tmp_path / "raw")
    error_message(info)
    assert not (tmp_path / "raw").exists()


def test_symlink_member_not_followed(tmp_path):
    archive = tmp_path / "links.zip"
    files = rsna_files()
    del files[f"{rsna.IMAGES_DIR}/p2.dcm"]
    write_zip(archive, files)
    with zipfile.ZipFile(archive, "a") as zf:
        link = zipfile.ZipInfo(f"{rsna.IMAGES_DIR}/p2.dcm")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="p2.dcm is a symbolic link"):
        download.run(local(archive), seed=0, raw_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_dicoms_counted(tmp_path):
    labels = LABELS + "".join(f"q{i},,,,,0\n" for i in range(7))
    classes_extra = "".join(f"q{i},Normal\n" for i in range(7))
    files = rsna_files(labels=labels)
    files[rsna.CLASSES_CSV] += classes_extra.encode()
    archive = write_zip(tmp_path / "rsna.zip", files)
    with pytest.raises(DatasetError) as info:
        download.run(local(archive), seed=0, raw_dir=tmp_path / "raw")
    message = error_message(info)
    assert "7 of 10" in message and "q0, q1, q2, q3, q4" in message and "q5" not in message
    assert not (tmp_path / "raw").exists()


def test_unlabelled_dicoms_reported_and_left_out(tmp_path):
    archive = write_zip(tmp_path / "rsna.zip", rsna_files(images=(*PATIENTS, "zz", "extra")))
    raw_dir = tmp_path / "raw"
    report = download.run(local(archive), seed=0, raw_dir=raw_dir)
    assert report.unlabelled == ("extra", "zz")
    assert report.images == 3
    assert (raw_dir / download.UNLABELLED_TXT).read_text() == "extra\nzz\n"
    assert not (raw_dir / rsna.IMAGES_DIR / "zz.dcm").exists()
    assert "2 DICOM(s) without labels" in report.summary()


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(DatasetError, match="nowhere.zip") as info:
        download.run(local(missing), seed=0, raw_dir=tmp_path / "raw")
    error_message(info)


def test_not_a_zip(tmp_path):
    bogus = tmp_path / "rsna.zip"
    bogus.write_text("not a zip")
    with pytest.raises(DatasetError, match="rsna.zip: not a zip file"):
        download.run(local(bogus), seed=0, raw_dir=tmp_path / "raw")


def test_empty_dataset(tmp_path):
    files = rsna_files(images=(), labels="patientId,x,y,width,height,Target\n")
    with pytest.raises(DatasetError, match="no patients"):
        download.run(local(write_zip(tmp_path / "rsna.zip", files)), seed=0, raw_dir=tmp_path / "raw")


def test_failed_run_keeps_previous_raw_dir(tmp_path):
    raw_dir = tmp_path / "raw"
    download.run(local(write_zip(tmp_path / "good.zip", rsna_files())), seed=0, raw_dir=raw_dir)
    before = {p.relative_to(raw_dir): p.read_bytes() for p in raw_dir.rglob("*") if p.is_file()}

    bad = write_zip(tmp_path / "bad.zip", rsna_files(images=("p0",)))
    with pytest.raises(DatasetError, match="2 of 3"):
        download.run(local(bad), seed=0, raw_dir=raw_dir)
    after = {p.relative_to(raw_dir): p.read_bytes() for p in raw_dir.rglob("*") if p.is_file()}
    assert after == before
    assert no_leftovers(tmp_path)


# --- Kaggle: credentials and the flow around the (faked) network call -------------------------


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    return config_dir


def test_kaggle_missing_credentials(tmp_path, no_kaggle_credentials):
    with pytest.raises(CredentialsError) as info:
        download.run(project_params({"download": {"source": "kaggle"}}).download, seed=0, raw_dir=tmp_path / "raw")
    message = error_message(info)
    for needed in ("KAGGLE_USERNAME", "KAGGLE_KEY", "kaggle.json", "rules", str(no_kaggle_credentials)):
        assert needed in message
    assert "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/rules" in message
    assert not (tmp_path / "raw").exists()


def test_kaggle_credentials_found(no_kaggle_credentials, monkeypatch):
    (no_kaggle_credentials / "kaggle.json").write_text('{"username": "u", "key": "secret-key"}')
    check_kaggle_credentials()
    (no_kaggle_credentials / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")
    check_kaggle_credentials()


def test_kaggle_broken_json_not_echoed(no_kaggle_credentials):
    (no_kaggle_credentials / "kaggle.json").write_text('{"username": "u", "key": "secret-key"')
    with pytest.raises(CredentialsError) as info:
        check_kaggle_credentials()
    assert "secret-key" not in str(info.value) and "kaggle.json" in str(info.value)


def fake_kaggle(monkeypatch, download_files):
    """Install a stand-in for kaggle.api.kaggle_api_extended whose download calls ``download_files``."""

    class FakeKaggleApi:
        def authenticate(self):
            pass

        def competition_download_files(self, competition, path=None, force=False, quiet=True, unzip=False):
            download_files(competition, Path(path))

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeKaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)


def test_kaggle_download_extracts_and_deletes_archive(tmp_path, no_kaggle_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")
    seen = {}

    def fake_download(competition, folder):
        seen["competition"], seen["folder"] = competition, folder
        write_zip(folder / f"{competition}.zip", rsna_files())

    fake_kaggle(monkeypatch, fake_download)
    raw_dir = tmp_path / "data" / "raw"
    report = download.run(project_params({"download": {"source": "kaggle"}}).download, seed=0, raw_dir=raw_dir)
    assert report.source == "kaggle" and report.patients == 3
    assert seen["competition"] == "rsna-pneumonia-detection-challenge"
    assert seen["folder"].parent == raw_dir.parent  # next to raw_dir: same file system
    assert not seen["folder"].exists()  # the archive went with its folder
    assert_rsna_raw_dir(raw_dir)
    assert no_leftovers(raw_dir.parent)
    assert not any(b"secret-key" in p.read_bytes() for p in raw_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize(("status", "error", "words"), [
    (401, CredentialsError, "HTTP 401"),
    (403, CredentialsError, "accept the competition rules"),
    (500, PneumoniaError, "HTTP 500"),
])
def test_kaggle_http_errors(tmp_path, no_kaggle_credentials, monkeypatch, status, error, words):
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")

    def refuse(competition, folder):
        response = requests.Response()
        response.status_code = status
        raise requests.exceptions.HTTPError("refused with key secret-key", response=response)

    fake_kaggle(monkeypatch, refuse)
    with pytest.raises(error, match=words) as info:
        download.run(project_params({"download": {"source": "kaggle"}}).download, seed=0, raw_dir=tmp_path / "raw")
    message = error_message(info)
    assert "secret-key" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not (tmp_path / "raw").exists() and no_leftovers(tmp_path)


FAKE_KAGGLE_MODULE = """
import os

import requests

SEEN = {"import": {name: os.environ.get(name) for name in ("VERBOSE", "VERBOSE_OUTPUT")}}


class KaggleApi:
    args = ["--verbose"]  # what kaggle sets at import when VERBOSE is 1/true/yes

    def authenticate(self):
        pass

    def competition_download_files(self, competition, path=None, force=False, quiet=True, unzip=False):
        SEEN["args"] = list(self.args)
        raise requests.exceptions.ConnectionError("no route to host")
"""


def test_kaggle_never_runs_verbose(tmp_path, no_kaggle_credentials, monkeypatch):
    """Verbose kaggle prints every request with its Authorization header: VERBOSE must not reach it."""
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")
    monkeypatch.setenv("VERBOSE", "1")
    monkeypatch.setenv("VERBOSE_OUTPUT", "true")
    site = tmp_path / "site"
    (site / "kaggle" / "api").mkdir(parents=True)
    (site / "kaggle" / "__init__.py").write_text("")
    (site / "kaggle" / "api" / "__init__.py").write_text("")
    (site / "kaggle" / "api" / "kaggle_api_extended.py").write_text(FAKE_KAGGLE_MODULE)
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # so that undo removes what this test imports
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(site))

    with pytest.raises(PneumoniaError, match=r"\(ConnectionError\)") as info:
        download.run(project_params({"download": {"source": "kaggle"}}).download, seed=0, raw_dir=tmp_path / "raw")
    error_message(info)
    seen = sys.modules["kaggle.api.kaggle_api_extended"].SEEN
    assert seen == {"import": {"VERBOSE": None, "VERBOSE_OUTPUT": None}, "args": []}
    # hidden only while kaggle was imported
    assert (os.environ["VERBOSE"], os.environ["VERBOSE_OUTPUT"]) == ("1", "true")


def test_synthetic_uses_phantom(tmp_path):
    params = project_params({"download": {"phantom": {"patients": 4, "size": 64}}}).download
    report = download.run(params, seed=1, raw_dir=tmp_path / "raw")
    assert report.source == "synthetic" and report.patients == 4 == report.images
    assert len(rsna.read_patients(tmp_path / "raw")) == 4


def test_unknown_source_guarded(tmp_path):
    params = project_params().download
    object.__setattr__(params, "source", "ftp")
    with pytest.raises(PneumoniaError, match="ftp"):
        download.run(params, seed=0, raw_dir=tmp_path / "raw")
