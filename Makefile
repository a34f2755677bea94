# Each target sets up .venv itself (pip; torch and torchvision pinned in pyproject.toml).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: repro test bench rehearsal setup readme plots-check

setup: $(STAMP)

# The machine's pip config warns once per package missing from a local index: keep the log readable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

# One pytest-xdist worker per core; a file whose module fixtures train a model stays on one worker.
test: $(STAMP)
	python -m pytest -n auto --dist loadgroup

$(BENCH_STAMP): $(STAMP)
	python -m pip install -q -e '.[bench]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $(BENCH_STAMP)

# Benchmarks: throughput and memory beside their references; writes benchmarks/results.json.
bench: $(BENCH_STAMP)
	python benchmarks/run.py

# The pipeline at the real dataset's size (26,684 phantom patients, 224 px, a cut epoch), stage by stage;
# writes benchmarks/rehearsal.json. About an hour on 2 cores; not part of `make test`.
rehearsal: $(BENCH_STAMP)
	python benchmarks/rehearsal.py

# The README's generated blocks (settings table from params.yaml, `dvc metrics show --md`).
readme: $(STAMP)
	python -m pneumonia.readme

# The plots page rendered offline and screenshotted in headless Chromium (docs/plots.png); needs chromium.
plots-check: $(STAMP)
	python scripts/plots_check.py
