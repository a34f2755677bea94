"""An RSNA dataset laid out as a folder or a zip: its files by name, each checked before anything is copied.

The labels CSV marks the layout's root: a zip may hold it at its root or inside
one top-level folder. A zip member whose path is absolute or climbs out ('..')
is refused before anything is extracted, and no member's own path is used on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from pneumonia.core.errors import DatasetError
from pneumonia.data import rsna


class Layout(Protocol):
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
def open_layout(path: Path, link: bool = False) -> Iterator[Layout]:
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
