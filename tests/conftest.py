import os

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
