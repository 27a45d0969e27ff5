# ffpipe developer targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; install it before anything that depends on torch so pip never
# resolves the CUDA build. Override e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
FFPIPE_DATA ?= $(abspath ../shared/data)
export FFPIPE_DATA
ARGS ?=

.PHONY: help setup train test test-fast bench-ff lint clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install ffpipe (torch==2.13.0 first, then the package)

train: setup  ## run the main job: sequential FF on the MNIST10k split (experiment=mnist10k); ARGS=... adds overrides
	$(PY) -m ffpipe.train experiment=mnist10k $(ARGS)

test: setup  ## run the test suite
	$(PY) -m pytest tests

test-fast: setup  ## the test suite without the slow end-to-end runs
	$(PY) -m pytest tests -m "not slow"

bench-ff: setup  ## FF vs backprop on MNIST10k: accuracy, seconds, samples/s, peak memory (table + JSON)
	$(PY) -m ffpipe.bench $(ARGS)

lint: setup  ## ruff
	$(VENV)/bin/ruff check src tests

clean:  ## remove run outputs and caches (not the venv)
	rm -rf outputs multirun bench_results .pytest_cache
