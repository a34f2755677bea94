"""The ``download`` stage's library: put the RSNA dataset into ``data/raw``.

Three sources (``download.source``): ``synthetic`` generates an offline phantom,
``kaggle`` downloads the competition archive, ``local`` takes a zip or folder
already on disk. Every source ends in the same step, :func:`install`: copy only
what the pipeline reads (the two label CSVs and ``stage_2_train_images/*.dcm`` of
labelled patients) into a temporary folder, validate it, and only then rename it
onto ``raw_dir``. A failure therefore never leaves a half-written ``raw_dir`` and
keeps a previous one intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from pneumonia.data import rsna
from pneumonia.data.phantom.dataset import generate
from pneumonia.core.atomic import atomic_dir
from pneumonia.core.errors import CredentialsError, DatasetError, PneumoniaError
from pneumonia.core.params import DownloadParams

UNLABELLED_TXT = "unlabelled_dicoms.txt"
KAGGLE_API_PAGE = "https://www.kaggle.com/settings/api"


@dataclass(frozen=True)
class DownloadReport:
    """What :func:`run` put into ``raw_dir``."""

    source: str  # synthetic | kaggle | local
    patients: int  # labelled patients (one image each)
    positives: int  # patients with Target=1
    images: int  # DICOM files kept in stage_2_train_images/
    unlabelled: tuple[str, ...]  # patientIds of DICOMs without a label row, left out

    def summary(self) -> str:
        """One line for the stage to print."""
        line = (
            f"download ({self.source}): {self.patients} patients, {self.positives} positive, "
            f"{self.images} images"
        )
        if self.unlabelled:
            line += f"; {len(self.unlabelled)} DICOM(s) without labels ignored (listed in {UNLABELLED_TXT})"
        return line


def run(params: DownloadParams, seed: int, raw_dir: Path = Path("data/raw")) -> DownloadReport:
    """Fetch the dataset from ``params.source`` into ``raw_dir`` (replaced only on success).

    ``seed`` seeds the synthetic phantom; the other sources ignore it.
    """
    raw_dir = Path(raw_dir)
    if params.source == "local":
        source_path = Path(params.path or "")
        if not source_path.exists():
            raise DatasetError(
                f"download.path {source_path}: does not exist; point it at a zip or folder in the RSNA layout"
            )
        return install(source_path, raw_dir, source="local")

    if params.source == "synthetic":
        with _scratch_dir(raw_dir) as scratch:
            generated = scratch / "phantom"
            generate(generated, patients=params.phantom.patients, size=params.phantom.size, seed=seed)
            return install(generated, raw_dir, source="synthetic")

    if params.source == "kaggle":
        check_kaggle_credentials(params.competition)
        # The archive lives in the scratch folder, so it is deleted with it, success or not.
        with _scratch_dir(raw_dir) as scratch:
            archive = _download_from_kaggle(params.competition, scratch)
            return install(archive, raw_dir, source="kaggle")

    raise PneumoniaError(f"params.yaml: download.source {params.source!r} is unknown; use synthetic, kaggle or local")


def install(source_path: Path, raw_dir: Path, source: str) -> DownloadReport:
    """Copy the RSNA files the pipeline needs from a zip or folder into ``raw_dir``, validated.

    The zip may hold the files at its root or inside one top-level folder. Labelled
    patients without an image are an error; images without labels are left out and
    listed in ``raw_dir/unlabelled_dicoms.txt``. ``source`` only labels the report.
    """
    source_path = Path(source_path)
    # Only files this stage generated itself may be hard-linked: a user's own files could
    # otherwise share an inode with the DVC cache, which makes cached files read-only.
    with _open_layout(source_path, link=source == "synthetic") as layout, atomic_dir(raw_dir) as staging:
        return _assemble(layout, staging, source)


# --- sources laid out like RSNA: a folder or a zip --------------------------------------------


class _Layout(Protocol):
    """Files of an RSNA layout, named relative to its root with "/" (``stage_2_train_images/x.dcm``)."""

    description: str  # how messages name the source: a folder, or "archive.zip" / "archive.zip:top/"

    def has(self, name: str) -> bool: ...

    def image_ids(self) -> set[str]: ...

    def place(self, name: str, destination: Path) -> None: ...


class _FolderLayout:
    """An RSNA folder; files are copied (hard-linked when ``link`` and possible), never moved."""

    def __init__(self, root: Path, link: bool = False):
        self.root = root
        self.link = link
        self.description = str(root)
        if not (root / rsna.LABELS_CSV).is_file():
            raise DatasetError(
                f"{root}: no {rsna.LABELS_CSV} in this folder; point download.path at the folder "
                f"that holds it, {rsna.CLASSES_CSV} and {rsna.IMAGES_DIR}/"
            )

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def image_ids(self) -> set[str]:
        images = self.root / rsna.IMAGES_DIR
        if not images.is_dir():
            return set()
        with os.scandir(images) as entries:
            return {e.name[: -len(".dcm")] for e in entries if e.name.endswith(".dcm") and e.is_file()}

    def place(self, name: str, destination: Path) -> None:
        source = self.root / name
        if self.link:
            try:
                os.link(source, destination)
                return
            except OSError:
                pass  # another file system, or one without hard links
        shutil.copyfile(source, destination)  # reflinks where the file system can


class _ZipLayout:
    """An RSNA zip, every member checked before anything is extracted."""

    def __init__(self, archive: zipfile.ZipFile, path: Path):
        self.archive = archive
        self.description = str(path)
        names = [info.filename for info in archive.infolist()]
        for name in names:
            _check_member(name, path)
        prefix = _layout_root(names, path)
        if prefix:
            self.description = f"{path}:{'/'.join(prefix)}/"
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if not info.is_dir() and parts[: len(prefix)] == prefix:
                self.members["/".join(parts[len(prefix) :])] = info

    def has(self, name: str) -> bool:
        return name in self.members

    def image_ids(self) -> set[str]:
        ids = set()
        for name in self.members:
            folder, _, file_name = name.partition("/")
            if folder == rsna.IMAGES_DIR and "/" not in file_name and file_name.endswith(".dcm"):
                ids.add(file_name[: -len(".dcm")])
        return ids

    def place(self, name: str, destination: Path) -> None:
        info = self.members[name]
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(
                f"{self.description}: member {info.filename} is a symbolic link, which is not followed; "
                "rebuild the archive with the real files (zip without -y)"
            )
        # Stream to a name we chose: the member's own path is never used on disk.
        with self.archive.open(info) as src, open(destination, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def _check_member(name: str, archive: Path) -> None:
    """Refuse a member whose path is absolute or climbs out of the extraction folder (zip-slip)."""
    normalised = name.replace("\\", "/")  # a backslash is a separator on Windows
    parts = PurePosixPath(normalised).parts
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise DatasetError(
            f"{archive}: member {name!r} has an absolute path; refusing to extract an unsafe archive, "
            "get the dataset from its original source"
        )
    if ".." in parts:
        raise DatasetError(
            f"{archive}: member {name!r} escapes the extraction folder ('..'); refusing to extract an "
            "unsafe archive, get the dataset from its original source"
        )


def _layout_root(names: list[str], archive: Path) -> tuple[str, ...]:
    """The folder of the archive that holds the labels CSV: the root, or one top-level folder."""
    roots = set()
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if len(parts) <= 2 and parts and parts[-1] == rsna.LABELS_CSV:
            roots.add(parts[:-1])
    if () in roots:
        return ()
    if len(roots) == 1:
        return roots.pop()
    if not roots:
        raise DatasetError(
            f"{archive}: no {rsna.LABELS_CSV} at its root or inside one top-level folder; "
            "is this the RSNA Pneumonia Detection Challenge archive?"
        )
    found = ", ".join(sorted("/".join(r) for r in roots))
    raise DatasetError(
        f"{archive}: {rsna.LABELS_CSV} is in several top-level folders ({found}); keep one copy in the archive"
    )


@contextlib.contextmanager
def _open_layout(path: Path, link: bool = False) -> Iterator[_Layout]:
    if path.is_dir():
        yield _FolderLayout(path, link)
        return
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatasetError(
            f"{path}: not a zip file; give a .zip or a folder in the RSNA layout, or download it again"
        ) from None
    with archive:
        yield _ZipLayout(archive, path)


# --- validation and assembly, the same for every source ---------------------------------------


def _assemble(layout: _Layout, staging: Path, source: str) -> DownloadReport:
    """Copy the CSVs, validate them against the images, then copy the labelled images."""
    for name in (rsna.LABELS_CSV, rsna.CLASSES_CSV):
        if not layout.has(name):
            raise DatasetError(
                f"{layout.description}: {name} is missing; the RSNA layout needs {rsna.LABELS_CSV}, "
                f"{rsna.CLASSES_CSV} and {rsna.IMAGES_DIR}/"
            )
        layout.place(name, staging / name)

    patients = rsna.read_patients(staging, shown_as=layout.description)
    if not patients:
        raise DatasetError(
            f"{layout.description}: {rsna.LABELS_CSV} has no patients; use the full label file"
        )

    image_ids = layout.image_ids()
    missing = [p.patient_id for p in patients if p.patient_id not in image_ids]
    if missing:
        raise DatasetError(
            f"{layout.description}: {len(missing)} of {len(patients)} labelled patients have no "
            f"{rsna.IMAGES_DIR}/<patientId>.dcm (first: {', '.join(missing[:5])}); add the images "
            "or use the label files that match them"
        )
    labelled = {p.patient_id for p in patients}
    unlabelled = tuple(sorted(image_ids - labelled))

    images = staging / rsna.IMAGES_DIR
    images.mkdir()
    for patient in patients:
        file_name = f"{patient.patient_id}.dcm"
        layout.place(f"{rsna.IMAGES_DIR}/{file_name}", images / file_name)
    if unlabelled:
        (staging / UNLABELLED_TXT).write_text("".join(f"{pid}\n" for pid in unlabelled))

    return DownloadReport(
        source=source,
        patients=len(patients),
        positives=sum(p.target for p in patients),
        images=len(patients),
        unlabelled=unlabelled,
    )


@contextlib.contextmanager
def _scratch_dir(raw_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``raw_dir`` (same file system, so files can be linked cheaply)."""
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{raw_dir.name}.download-", dir=raw_dir.parent) as scratch:
        yield Path(scratch)


# --- Kaggle -----------------------------------------------------------------------------------


def check_kaggle_credentials(competition: str = "rsna-pneumonia-detection-challenge") -> None:
    """Raise :class:`CredentialsError` unless the kaggle package will find credentials.

    Checked without importing ``kaggle``: its ``__init__`` authenticates at import
    time and its ``authenticate`` calls ``exit(1)`` when nothing is found. Looks where
    kaggle 2.x looks: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` (each overriding kaggle.json),
    kaggle.json in ``KAGGLE_CONFIG_DIR`` or ``~/.kaggle`` (``~/.config/kaggle`` on Linux
    when ``~/.kaggle`` does not exist), or an API token (``KAGGLE_API_TOKEN``,
    ``~/.kaggle/access_token``). The key itself is never shown.
    """
    if os.environ.get("KAGGLE_API_TOKEN") or (Path.home() / ".kaggle" / "access_token").is_file():
        return
    config = _kaggle_json_path()
    values = _read_kaggle_json(config) if config.is_file() else {}
    username = os.environ.get("KAGGLE_USERNAME") or values.get("username")
    key = os.environ.get("KAGGLE_KEY") or values.get("key")
    if username and key:
        return
    raise CredentialsError(
        "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
        f"(from {KAGGLE_API_PAGE}) as {config}; and accept the competition rules on "
        f"{_rules_url(competition)}"
    )


def _read_kaggle_json(config: Path) -> dict:
    """The settings in kaggle.json; the message on failure never echoes the file, which holds the key."""
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        values = None
    if not isinstance(values, dict):
        raise CredentialsError(
            f"{config}: not a readable JSON object; download a fresh kaggle.json from {KAGGLE_API_PAGE}"
        )
    return values


def _kaggle_json_path() -> Path:
    """Where kaggle 2.2.5 reads kaggle.json (its ``KaggleApi.config``)."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        return Path(config_dir) / "kaggle.json"
    home_dir = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle" / "kaggle.json"
    return home_dir / "kaggle.json"


def _rules_url(competition: str) -> str:
    return f"https://www.kaggle.com/c/{competition}/rules"


# Read by kaggle when imported: any of them set to 1/true/yes makes it print each request,
# headers included, and turns on DEBUG logging for the whole process.
_KAGGLE_VERBOSE_VARIABLES = ("VERBOSE", "VERBOSE_OUTPUT")


def _import_kaggle_api() -> type:
    """``KaggleApi``, imported (only now: the package authenticates when imported) with verbosity off."""
    hidden = {name: os.environ.pop(name) for name in _KAGGLE_VERBOSE_VARIABLES if name in os.environ}
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    finally:
        os.environ.update(hidden)
    return KaggleApi


def _download_from_kaggle(competition: str, folder: Path) -> Path:
    """Download the competition's archive into ``folder``; return the zip's path.

    Exceptions are turned into one-liners without their text, which could carry
    request details; the traceback is dropped for the same reason.
    """
    import requests  # a dependency of kaggle

    api = _import_kaggle_api()()
    # kaggle's verbose mode prints every request with its Authorization header (the key,
    # base64-encoded) to stdout: keep it off even where kaggle was imported before.
    api.args = [arg for arg in getattr(api, "args", []) if arg not in ("--verbose", "-v")]
    try:
        api.authenticate()
    except SystemExit:
        # kaggle prints its own help and calls exit(1) when no credentials work
        raise CredentialsError(
            "Kaggle refused to authenticate: check KAGGLE_USERNAME and KAGGLE_KEY or kaggle.json "
            f"(a fresh one from {KAGGLE_API_PAGE})"
        ) from None

    try:
        api.competition_download_files(competition, path=str(folder), quiet=False)
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise CredentialsError(
                f"Kaggle rejected the credentials (HTTP 401); create a new API token on {KAGGLE_API_PAGE} "
                "and update KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json"
            ) from None
        if status == 403:
            raise CredentialsError(
                f"Kaggle refused the download of {competition} (HTTP 403); accept the competition rules "
                f"on {_rules_url(competition)} with this account, then rerun"
            ) from None
        if status == 404:
            raise PneumoniaError(
                f"Kaggle has no competition {competition!r} (HTTP 404); check download.competition in params.yaml"
            ) from None
        raise PneumoniaError(
            f"Kaggle download of {competition} failed (HTTP {status}); try again later"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise PneumoniaError(
            f"could not download {competition} from Kaggle ({type(exc).__name__}); check the network and rerun"
        ) from None

    archives = sorted(folder.glob("*.zip"))
    if len(archives) != 1:
        raise PneumoniaError(
            f"Kaggle download of {competition} left {len(archives)} zip files in {folder}, expected one; rerun"
        )
    return archives[0]
