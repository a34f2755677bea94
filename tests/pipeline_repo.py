"""A throwaway copy of the project in a temporary git repository, for running the real stages."""

from __future__ import annotations

import configparser
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parents[1]

# A few dozen small images, one epoch: the whole pipeline in well under a minute.
TINY_PARAMS = {
    "base": {"seed": 3},
    "download": {"phantom": {"patients": 48, "size": 256}},
    "split": {"train_size": 0.5, "test_size": 0.25, "stratify": True},
    "dicom_to_npy": {"image_size": 32, "workers": 2, "grid_images": 4},
    "train": {"max_epochs": 2, "batch_size": 8, "grid_images": 4},  # 2: test_interruptions kills the second
    "evaluate": {"batch_size": 16, "bootstrap_resamples": 200},
    "detect": {"image_size": 32, "max_epochs": 2, "batch_size": 8, "width": 16},
    "decide": {"folds": 2},
    "evaluate_detection": {"overlays": 1, "bootstrap_resamples": 200},
}


def environment() -> dict[str, str]:
    """This process's environment with its interpreter's bin/ first on PATH (so `python` and `dvc` are the venv's)."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


def run(args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in :func:`environment` (or ``env``), its output captured."""
    result = subprocess.run(args, cwd=cwd, env=env or environment(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def settings_without_remotes(config_text: str) -> str:
    """The project's DVC settings (cache link type, plots page) without any remote the user added.

    A test adds its own remote, and a throwaway repository must never push to the user's.
    """
    config = configparser.ConfigParser()
    config.read_string(config_text)
    for section in config.sections():
        if section.startswith("'remote"):
            config.remove_section(section)
    if config.has_section("core"):
        config.remove_option("core", "remote")
    out = io.StringIO()
    config.write(out)
    return out.getvalue()


def make_repo(path: Path, params: dict | None = None) -> Path:
    """Copy the pipeline's files into ``path``, write ``params`` over the defaults, git + dvc init, commit."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (path / "local_data").mkdir()  # download.path's default, a dependency of the download stage
    shutil.copy(ROOT / "local_data" / "README.md", path / "local_data" / "README.md")
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in (TINY_PARAMS if params is None else params).items():
        _merge(defaults.setdefault(section, {}), values)
    (path / "params.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    run(["dvc", "init", "-q"], path)
    (path / ".dvc" / "config").write_text(settings_without_remotes((ROOT / ".dvc" / "config").read_text()))
    shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")  # plot templates and the offline page
    commit(path, "pipeline")
    return path


BASELINE_LOG = "baseline-repro.log"  # in a baseline copy: what its `dvc repro` printed (stdout, then stderr)


def session_folder(tmp_path_factory) -> Path:
    """This test session's folder, shared by its pytest-xdist workers (each has a subfolder of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def baseline_repo(path: Path, cache_root: Path) -> Path:
    """A copy, at ``path``, of the tiny pipeline after `dvc repro`, committed ("baseline run").

    The pipeline runs once per test session: the first test to ask builds it under ``cache_root``
    (shared by pytest-xdist's workers, guarded by a file lock) and every test gets its own copy.
    """
    shutil.copytree(baseline_template(cache_root), path, symlinks=True)
    return path


READ_AUDIT = Path(__file__).resolve().parent / "read_audit"  # its sitecustomize.py records what stages read


def baseline_template(cache_root: Path) -> Path:
    """The session's baseline repository itself, built on first use: read it, never change it (copy it instead).

    Its `dvc repro` runs under tests/read_audit's hook: each stage's reads go to ``baseline-reads/``
    beside it (see :func:`baseline_reads`).
    """
    from filelock import FileLock  # DVC's own dependency

    template = cache_root / "baseline-repo"
    with FileLock(str(cache_root / "baseline-repo.lock")):
        if not (template / ".baseline-done").exists():
            reads = cache_root / "baseline-reads"
            for folder in (template, reads):
                if folder.exists():
                    shutil.rmtree(folder)
            make_repo(template)
            reads.mkdir()
            env = environment()
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(READ_AUDIT), env.get("PYTHONPATH")]))
            env["PNEUMONIA_READ_LOG"] = str(reads)
            result = run(["dvc", "repro"], template, env=env)
            (template / BASELINE_LOG).write_text(result.stdout + result.stderr)
            (template / ".git" / "info" / "exclude").write_text(f"{BASELINE_LOG}\n.baseline-done\n")
            commit(template, "baseline run")
            (template / ".baseline-done").touch()
    return template


def baseline_reads(cache_root: Path) -> dict[str, set[str]]:
    """The files each stage script of the baseline run read as inputs, as ``{script: {path}}`` (see :func:`inputs`).

    Paths are relative to the repository (the hook keeps no other); scripts as the stage's cmd names
    them (``stages/train.py``). Processes a stage forked count as the stage.
    """
    template = os.path.realpath(baseline_template(cache_root))
    lines = []
    for log in sorted((cache_root / "baseline-reads").glob("*.reads")):
        for line in log.read_text().splitlines():
            script, kind, path = line.split("\t")
            lines.append((script, kind, os.path.relpath(os.path.realpath(path), template)))
    return inputs(lines)


def inputs(events: list[tuple[str, str, str]]) -> dict[str, set[str]]:
    """``{script: {path}}`` of the ``(script, "r" or "w", path)`` events, in the order they happened, that
    read a file the same script had not written before, itself or a folder above it (renamed into
    place): reading back its own work (an atomic temporary, a checkpoint of this run) is no input."""
    written: dict[str, set[str]] = {}
    read: dict[str, set[str]] = {}
    for script, kind, path in events:
        own = written.setdefault(script, set())
        if kind == "w":
            own.add(path)
        elif not any(str(folder) in own for folder in (PurePosixPath(path), *PurePosixPath(path).parents)):
            read.setdefault(script, set()).add(path)
    return read


def commit(path: Path, message: str) -> None:
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", message], path)


def _merge(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(target.setdefault(key, {}), value)
        else:
            target[key] = value
