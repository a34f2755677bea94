"""The Kaggle source: credentials checked without importing ``kaggle``, and the competition's archive downloaded.

No message or traceback ever carries the key or a request's details.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pneumonia.core.errors import CredentialsError, PneumoniaError

KAGGLE_API_PAGE = "https://www.kaggle.com/settings/api"


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


def download_from_kaggle(competition: str, folder: Path) -> Path:
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
