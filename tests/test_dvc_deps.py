"""dvc.yaml declares every library module a stage runs: the transitive imports of its script within the package.

An undeclared module is a stage DVC will not rerun when that module changes, and outputs that go
stale without a word. Imports are read statically (ast), function-level ones included.
"""

import ast
from pathlib import Path

import pytest
import yaml

from pipeline_repo import ROOT

SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pneumonia"}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parts + ([module] if module else []))
            if module.split(".")[0] == "pneumonia":
                found.add(module)
                found |= {f"{module}.{alias.name}" for alias in node.names if _module_file(f"{module}.{alias.name}")}
    return found


def stage_modules(script: Path) -> set[str]:
    """Files (relative to the repository) of every pneumonia module ``script`` imports, directly or not."""
    seen: set[str] = set()
    todo = list(_imports(script, "stages"))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # parents' __init__
        todo += _imports(path, name if path.name == "__init__.py" else name.rsplit(".", 1)[0])
    files = {_module_file(name) for name in seen} - {None}
    return {str(f.relative_to(ROOT)) for f in files if _runs_code(f)}


def _runs_code(path: Path) -> bool:
    """False for a file of nothing or of a docstring alone (a subpackage's __init__): editing it changes no output."""
    body = ast.parse(path.read_text()).body
    return bool(body[1:] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_every_module_its_script_imports(name):
    stage = STAGES[name]
    script = stage["cmd"].split()[-1]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    assert script in deps
    missing = sorted(stage_modules(ROOT / script) - deps)
    assert not missing, f"dvc.yaml: stage {name} does not list {missing} among its deps"


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"check_params"}))
def test_every_stage_depends_on_check_params(name):
    assert "reports/params_check.txt" in STAGES[name]["deps"]


def test_the_check_fails_when_a_module_is_missing():
    """The closure finds a module imported two steps away: decide reaches dicom/rendering.py via dicom/read.py."""
    assert "src/pneumonia/data/dicom/rendering.py" in stage_modules(ROOT / "stages/decide.py")
