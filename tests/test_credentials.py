"""Kaggle credentials never leave the process: not in output, logs, dvc.lock, params or any file.

The real ``dvc repro download`` runs with ``download.source: kaggle`` and fake
credentials, and the real kaggle client. Every HTTP(S) request goes to a proxy
on 127.0.0.1:9, where nothing listens, so the connection is refused at once
(no internet needed, nothing can hang); the stage must fail with one line.
VERBOSE=1 is set because kaggle reads it and would then print each request
with its Authorization header.
"""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_repo import commit, make_repo

pytestmark = pytest.mark.slow  # the real `dvc repro download` in temporary repositories

USER = "fake-user-7f3a"
KEY = "f4k3k3y0123456789abcdef"
# The forms the key could take in output: itself, and the HTTP Basic Authorization header's value.
SECRETS = [KEY.encode(), base64.b64encode(f"{USER}:{KEY}".encode())]
UNROUTABLE_PROXY = "http://127.0.0.1:9"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def files_holding_secrets(root: Path) -> list[Path]:
    """Every file under ``root`` (hidden ones and .git included) that holds one of ``SECRETS``."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            content = path.read_bytes()
            if any(secret in content for secret in SECRETS):
                found.append(path)
    return found


def repro_download(tmp_path: Path, credentials_in: str) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    """``dvc repro download`` in a fresh project with source kaggle; HOME, TMPDIR and DVC's site cache in tmp."""
    repo = make_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["download"]["source"] = "kaggle"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(repo, "download from kaggle")

    places = {"repo": repo}
    for name in ("home", "tmp", "site_cache"):
        places[name] = tmp_path / name
        places[name].mkdir()
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("KAGGLE_") and k not in PROXY_VARIABLES + ("NO_PROXY", "no_proxy", "XDG_CONFIG_HOME")
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HOME=str(places["home"]),
        TMPDIR=str(places["tmp"]),
        DVC_SITE_CACHE_DIR=str(places["site_cache"]),
        DVC_NO_ANALYTICS="1",
        VERBOSE="1",
        **{name: UNROUTABLE_PROXY for name in PROXY_VARIABLES},
    )
    if credentials_in == "env":
        env.update(KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY)
    else:
        kaggle_json = places["home"] / ".kaggle" / "kaggle.json"
        kaggle_json.parent.mkdir()
        kaggle_json.write_text(json.dumps({"username": USER, "key": KEY}))
        kaggle_json.chmod(0o600)
    result = subprocess.run(
        ["dvc", "repro", "download"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    return result, places


@pytest.mark.parametrize("credentials_in", ["env", "kaggle.json"])
def test_kaggle_credentials_never_written_or_printed(tmp_path, credentials_in):
    result, places = repro_download(tmp_path, credentials_in)
    output = result.stdout + result.stderr

    # It got as far as the network: the credentials were found, the request refused, one line said so.
    assert result.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("download: error:")]
    assert len(errors) == 1, output
    assert "could not download rsna-pneumonia-detection-challenge from Kaggle" in errors[0], output
    assert "check the network" in errors[0]
    assert "Traceback" not in output
    assert not (places["repo"] / "data" / "raw").exists()
    assert not list((places["repo"] / "data").glob(".raw.download-*")), "scratch folder left behind"

    for secret in SECRETS:
        assert secret.decode() not in output, f"credentials printed:\n{output}"
    for name in ("repo", "tmp", "site_cache"):
        assert files_holding_secrets(places[name]) == [], f"credentials written under {name}"
    kaggle_json = places["home"] / ".kaggle" / "kaggle.json"
    if credentials_in == "kaggle.json":
        # The user's own kaggle.json is where the key belongs, and where the search does find it.
        assert files_holding_secrets(places["home"]) == [kaggle_json]
        assert json.loads(kaggle_json.read_text()) == {"username": USER, "key": KEY}
    else:
        assert files_holding_secrets(places["home"]) == []
        assert not kaggle_json.exists(), "credentials from the environment were saved to kaggle.json"
