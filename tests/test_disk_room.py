"""The test run checks for room on its temporary folder's disk before it starts (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(needs_gb: str, basetemp: Path) -> subprocess.CompletedProcess:
    """Collect one small test file in a child pytest told that the tests need ``needs_gb`` GB."""
    env = {**os.environ, "PNEUMONIA_TEST_NEEDS_GB": needs_gb}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "--collect-only", "-q",
         f"--basetemp={basetemp / 'base'}", "tests/test_lock.py"],
        cwd=ROOT, env=env, capture_output=True, text=True)


def test_a_disk_without_room_stops_the_run_in_one_line_naming_the_folder(tmp_path):
    refused = collect("1e9", tmp_path)  # a billion GB: no disk has it
    assert refused.returncode == 4, refused.stdout + refused.stderr  # pytest's usage error
    message = [line for line in refused.stderr.splitlines() if "GB free" in line]
    assert len(message) == 1, refused.stderr
    assert str(tmp_path) in message[0] and "TMPDIR" in message[0]
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "base").exists()  # nothing written before the refusal


def test_a_disk_with_room_runs():
    accepted = collect("0", Path("/nonexistent/deeper"))  # a folder not made yet: its nearest existing parent
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
