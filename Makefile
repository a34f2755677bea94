# Each target sets up .venv itself, with pip, from requirements.lock: the exact versions and sha256
# hashes of every package (torch and torchvision included). pyproject.toml keeps ranges for those who
# install the package as a library; `make lock` turns them into the lock again.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
LOCK := requirements.lock
BENCH_LOCK := requirements-bench.lock
LOCK_TOOLS := .venv-lock
# The machine's pip config warns once per package missing from a local index: keep the log readable.
PIP_LOG := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
export DVC_NO_ANALYTICS := 1
# setup installs without byte-compiling (below), so Python must be free to write each module's .pyc when
# it first imports it: with PYTHONDONTWRITEBYTECODE set, every stage process (and DVC) would compile
# torch from source again, which doubled the test suite's time.
unexport PYTHONDONTWRITEBYTECODE
export PATH := $(BIN):$(PATH)

.PHONY: repro test test-all bench rehearsal setup lock readme plots-check compare

setup: $(STAMP)

# The project itself goes in without dependencies (the lock has them all) and builds with the locked
# setuptools (no build isolation: nothing is fetched unhashed). --no-compile: Python compiles a module
# when it is first imported; compiling all 14,000 files of the environment up front cost about a minute.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --require-hashes -r $(LOCK) $(PIP_LOG)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . $(PIP_LOG)
	touch $(STAMP)

# The locks, made by pip-compile (pip-tools), which resolves with pip itself: it reads this machine's
# pip config (the local copies of torch, torchvision and the nvidia-* wheels, the torch cap) and so
# locks what `pip install` takes here, for Linux x86_64 and Python 3.11, as CI runs. uv ignores pip's
# config and would fetch torch from PyPI. Each entry lists the sha256 of every file of its release:
# PyPI's (all platforms) and those of the local copies, which pip-compile hashes itself (most of its
# ~12 minutes a lock); the local copies are byte-identical to PyPI's, so either installs. Kept pins
# move only when pyproject.toml needs it: `make lock LOCK_ARGS=--upgrade` moves all of them,
# `LOCK_ARGS='--upgrade-package dvc'` one. The bench lock is the main lock plus the bench extra.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" nice $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock:
	test -x $(LOCK_TOOLS)/bin/python || python3 -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -q pip-tools==7.6.2 $(PIP_LOG)
	$(PIP_COMPILE) --extra test --output-file $(LOCK) pyproject.toml $(PIP_LOG)
	$(PIP_COMPILE) --extra test --extra bench --constraint $(LOCK) --output-file $(BENCH_LOCK) pyproject.toml $(PIP_LOG)

repro: $(STAMP)
	dvc repro

# Every headline metric of this workspace's run beside the committed one, judged against the wider of the
# committed bootstrap interval and the training noise of benchmarks/seed_spread.json; exit 1 when outside.
compare: $(STAMP)
	python -m scripts.noise HEAD

# One pytest-xdist worker per core, each file on one worker (its module fixtures, some of which train a
# model, are built once); the slow end-to-end files first, in tests/conftest.py's order (xdist would
# otherwise start the files with the most tests first and leave the minutes-long ones for last). The 25
# slowest tests are listed at the end, so a CI log says where the minutes went.
test: $(STAMP)
	python -m pytest -n auto --dist loadfile --no-loadscope-reorder -m "not exhaustive" --durations=25

# make test and the exhaustive variants (about 3 more CPU minutes).
test-all: $(STAMP)
	python -m pytest -n auto --dist loadfile --no-loadscope-reorder

# The bench lock holds the main lock's versions plus the bench extra: nothing installed above moves.
$(BENCH_STAMP): $(STAMP) $(BENCH_LOCK)
	python -m pip install -q --require-hashes -r $(BENCH_LOCK) $(PIP_LOG)
	touch $(BENCH_STAMP)

# Benchmarks: throughput and memory beside their references; writes benchmarks/results.json.
bench: $(BENCH_STAMP)
	python benchmarks/run.py

# The pipeline at the real dataset's size (26,684 phantom patients, 224 px, a cut epoch), stage by stage;
# writes benchmarks/rehearsal.json. Two to three hours on 2 cores (`--resume` goes on after an interruption); not part of `make test`.
rehearsal: $(BENCH_STAMP)
	python benchmarks/rehearsal.py

# The generated blocks of README.md and docs/*.md (the headline, the settings table from params.yaml,
# `dvc metrics show --md`, the bench tables, ...).
readme: $(STAMP)
	python -m scripts.readme

# The plots page rendered offline and screenshotted in headless Chromium (docs/plots.png); needs chromium.
plots-check: $(STAMP)
	python scripts/plots_check.py
