"""The lock files agree with pyproject.toml: every dependency locked, inside its range, with hashes.

pyproject.toml keeps ranges (for installing the package as a library); `make setup` installs the
exact versions of requirements.lock, and `make bench` those of requirements-bench.lock. A range
edited without `make lock` leaves a lock that no longer satisfies it: these tests say so, offline.
"""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, what the lock is made for

ROOT = Path(__file__).resolve().parent.parent
# Each lock file and the extras of pyproject.toml it holds besides the main dependencies.
LOCKS = {"requirements.lock": ("test",), "requirements-bench.lock": ("test", "bench")}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """`{canonical name: (version, [hashes])}` of a pip-compile lock; an entry that is no `name==version` fails."""
    entries: dict[str, tuple[str, list[str]]] = {}
    # One entry spans several lines joined by backslashes; comments ("# via ...") stand on their own lines.
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split(" --")
        pin = PIN.match(requirement.strip())
        assert pin, f"{path.name}: {line[:60]!r} is not an exact `name==version` pin; regenerate it with `make lock`"
        hashes = [option.split(":", 1)[1].strip() for option in options if option.startswith("hash=sha256:")]
        entries[canonicalize_name(pin[1])] = (pin[2], hashes)
    return entries


def project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return wanted


@pytest.mark.parametrize("lock_name", LOCKS)
def test_every_dependency_of_pyproject_is_locked_inside_its_range(lock_name):
    lock = read_lock(ROOT / lock_name)
    extras = LOCKS[lock_name]
    problems = []
    for requirement in project_requirements(extras):
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement.name} is not in it")
        elif not requirement.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{requirement.name}=={lock[name][0]} is outside pyproject's {requirement}")
    assert not problems, f"{lock_name} disagrees with pyproject.toml: " + "; ".join(problems) + "; run `make lock`"


@pytest.mark.parametrize("lock_name", LOCKS)
def test_every_locked_package_has_a_sha256_hash(lock_name):
    lock = read_lock(ROOT / lock_name)
    assert len(lock) > 50, f"{lock_name} holds {len(lock)} entries: is it the output of `make lock`?"
    unhashed = sorted(name for name, (_, hashes) in lock.items() if not hashes)
    assert not unhashed, f"{lock_name}: no --hash for {', '.join(unhashed)}; run `make lock`"
    malformed = sorted(
        name for name, (_, hashes) in lock.items() if not all(re.fullmatch("[0-9a-f]{64}", h) for h in hashes)
    )
    assert not malformed, f"{lock_name}: a hash that is no sha256 for {', '.join(malformed)}; run `make lock`"


def test_the_bench_lock_adds_packages_but_changes_no_version_of_the_main_lock():
    """`make bench` installs over the environment of `make setup`: it must not move anything there."""
    main, bench = read_lock(ROOT / "requirements.lock"), read_lock(ROOT / "requirements-bench.lock")
    missing = sorted(set(main) - set(bench))
    moved = sorted(
        f"{name} {version} -> {bench[name][0]}" for name, (version, _) in main.items() if bench.get(name, (version,))[0] != version
    )
    assert not moved and not missing, f"requirements-bench.lock moved {moved}, lacks {missing}; run `make lock`"
