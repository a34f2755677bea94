"""dvc.yaml declares everything a stage runs and reads: the transitive imports of its script within the
package, and every file of the repository it opens.

An undeclared module or file is a stage DVC will not rerun when it changes, and outputs that go
stale without a word. Imports are read statically (ast), function-level ones included; files are
those the stages opened in the session's baseline `dvc repro` (tests/read_audit records them).
"""

import ast
import copy
import re
from pathlib import Path

import pytest
import yaml

from pipeline_repo import ROOT, baseline_reads, baseline_template, inputs, session_folder

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


# --- files a stage reads ------------------------------------------------------------------------------

# Not checked here: the code (the imports above are), params (declared by key), DVC's and git's own files
# (DVCLive, in train, opens the repository as DVC does: .dvc/config, .dvcignore, .git/).
NOT_DATA = re.compile(r"^(\.git|\.dvc|src|stages)/|\.pyc$|^params\.yaml$|(^|/)\.(dvc|git)ignore$")


def _path(entry: str | dict) -> str:
    return (entry if isinstance(entry, str) else next(iter(entry))).rstrip("/")


def undeclared_reads(reads: dict[str, set[str]], stages: dict) -> list[str]:
    """One line per file a stage read that is neither among its deps nor its outs (a file, or inside a folder).

    ``reads`` maps a stage's script (as its cmd names it) to the paths it opened, relative to the
    repository; ``stages`` is dvc.yaml's stages section, its ``${...}`` resolved.
    """
    stage_of = {stage["cmd"].split()[-1]: name for name, stage in stages.items()}
    problems = []
    for script, paths in sorted(reads.items()):
        if script not in stage_of:
            problems.append(f"{script} read {sorted(paths)} but no stage of dvc.yaml runs it")
            continue
        name = stage_of[script]
        stage = stages[name]
        declared = [_path(e) for kind in ("deps", "outs", "metrics", "plots") for e in stage.get(kind, [])]
        for path in sorted(paths):
            if path.startswith(("/", "../")) or NOT_DATA.search(path):
                continue
            if not any(path == d or path.startswith(d + "/") for d in declared):
                problems.append(f"dvc.yaml: stage {name} reads {path}, neither among its deps nor its outs: "
                                f"add it to the stage's deps")
    return problems


def resolved_stages(repo: Path) -> dict:
    """dvc.yaml's stages with each ``${section.key}`` replaced by its value in the repository's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        found = params
        for key in match.group(1).split("."):
            found = found[key]
        return str(found)

    text = re.sub(r"\$\{\s*([\w.]+)\s*\}", value, (repo / "dvc.yaml").read_text())
    return yaml.safe_load(text)["stages"]


TOY_STAGES = {
    "prepare": {"cmd": "python stages/prepare.py", "deps": ["stages/prepare.py", "data/raw/", "notes.txt"],
                "outs": [{"data/prepared": {"cache": False}}], "metrics": ["metrics/prepared.json"]},
}


def test_the_read_check_accepts_deps_outs_their_contents_and_what_it_leaves_to_others():
    reads = {"stages/prepare.py": {
        "data/raw/a/1.dcm", "notes.txt", "data/prepared/old.npy", "metrics/prepared.json",  # declared
        "stages/prepare.py", "src/pneumonia/core/params.py", "data/__pycache__/x.cpython-311.pyc", "params.yaml",
        ".git/HEAD", ".dvc/config", ".dvcignore", "/usr/lib/python3.11/os.py", "../elsewhere.txt",  # not data
    }}
    assert undeclared_reads(reads, TOY_STAGES) == []


def test_the_read_check_names_the_stage_and_the_file():
    reads = {"stages/prepare.py": {"data/raw/a/1.dcm", "data/rawer/2.dcm", "notes.txt.bak"},
             "stages/orphan.py": {"x.csv"}}
    problems = undeclared_reads(reads, TOY_STAGES)
    assert len(problems) == 3, problems  # in script then path order
    assert re.search(r"stages/orphan\.py.*no stage", problems[0])
    assert re.search(r"stage prepare reads data/rawer/2\.dcm.*deps", problems[1])  # a sibling, not inside data/raw
    assert re.search(r"stage prepare reads notes\.txt\.bak.*deps", problems[2])


def test_a_file_the_stage_wrote_before_reading_it_is_no_input():
    events = [("stages/train.py", "w", "models/.ckpt/best.ckpt"), ("stages/train.py", "r", "models/.ckpt/best.ckpt"),
              ("stages/detect.py", "r", "models/.ckpt/best.ckpt"),  # another stage's
              ("stages/train.py", "r", "models/.ckpt/last.ckpt"), ("stages/train.py", "w", "models/.ckpt/last.ckpt"),
              ("stages/train.py", "w", "data/.tmp/staged"), ("stages/train.py", "r", "data/.tmp/staged/a.csv"),  # moved in
              ("stages/train.py", "r", "data/.tmp/stage.csv")]
    assert inputs(events) == {"stages/detect.py": {"models/.ckpt/best.ckpt"},
                              "stages/train.py": {"models/.ckpt/last.ckpt", "data/.tmp/stage.csv"}}


@pytest.fixture
def baseline(tmp_path_factory):
    """(the files each stage script read in the session's baseline run, dvc.yaml's stages there)."""
    cache_root = session_folder(tmp_path_factory)
    return baseline_reads(cache_root), resolved_stages(baseline_template(cache_root))


@pytest.mark.slow
def test_every_file_a_stage_reads_is_among_its_deps(baseline):
    reads, stages = baseline
    assert set(reads) == {stage["cmd"].split()[-1] for stage in stages.values()}, "a stage ran without the read audit"
    assert undeclared_reads(reads, stages) == []


@pytest.mark.slow
def test_the_read_check_fails_when_the_report_loses_a_dep(baseline):
    reads, stages = baseline
    assert "reports/detection.md" in reads["stages/report.py"]
    stages = copy.deepcopy(stages)
    stages["report"]["deps"].remove("reports/detection.md")
    (problem,) = undeclared_reads(reads, stages)
    assert re.search(r"stage report reads reports/detection\.md", problem), problem
