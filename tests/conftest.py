import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Keep DVC offline and quiet in every test, whatever the caller's environment.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one thread each (and in the stages they start),
    # or torch's per-core thread pools would fight over the same cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked slow: real pipelines end to end) first, so no worker starts one last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# What `make test` writes under pytest's base temporary folder at its peak (throwaway repositories, DVC caches,
# phantom datasets, model files), measured with `du` every 10 s through a whole run: 2.6 GB, with passing tests'
# folders removed as they finish (pyproject's tmp_path_retention_policy; keeping them all, the peak was 9.1 GB).
# A disk that fills mid-run fails hundreds of tests at once, each with a different error (a checkpoint that cannot
# be saved, a truncated array), so the run checks for room first and says so in one line.
# PNEUMONIA_TEST_NEEDS_GB overrides the figure.
PEAK_GB = 3


def pytest_configure(config):
    """Refuse to start when the temporary folder's disk has less room than the tests write."""
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: its controller checked
    needed = float(os.environ.get("PNEUMONIA_TEST_NEEDS_GB", PEAK_GB))
    where = Path(config.option.basetemp or tempfile.gettempdir()).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 1e9
    if free < needed:
        raise pytest.UsageError(
            f"only {free:.1f} GB free on the disk of {where}; the tests write up to about {needed:g} GB there: "
            "free some space (old runs lie in pytest-of-$USER), or point TMPDIR or --basetemp at a roomier disk")
