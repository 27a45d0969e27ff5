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
# Ranks for `make train`: one per GPU, else one single-thread rank per core (2 to 4); at least 2.
NPROC ?= $(shell $(PY) -c "import os, torch; print(max(2, torch.cuda.device_count() or min(os.cpu_count() or 2, 4)))" 2>/dev/null || echo 2)
SCHEDULES ?= pff_all_layers,pff_single_layer
WORLD_SIZES ?= 1,2

.PHONY: help setup train train-sequential test test-fast bench-ff bench-pff sweep lint clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install ffpipe (torch==2.13.0 first, then the package)

train: setup  ## the flagship: All-Layers PFF on MNIST10k over NPROC ranks (GPUs, else CPU cores); ARGS=... adds overrides
	PYTHON=$(PY) bash launch/torchrun.sh $(NPROC) parallel=pff_all_layers experiment=mnist10k threads=1 $(ARGS)

train-sequential: setup  ## sequential FF on MNIST10k in one process (the baseline); ARGS=... adds overrides
	$(PY) -m ffpipe.train experiment=mnist10k $(ARGS)

test: setup  ## run the test suite
	$(PY) -m pytest tests

test-fast: setup  ## the test suite without the slow end-to-end runs
	$(PY) -m pytest tests -m "not slow"

bench-ff: setup  ## FF vs backprop on MNIST10k: accuracy, seconds, samples/s, peak memory (table + JSON)
	$(PY) -m ffpipe.bench $(ARGS)

bench-pff: setup  ## PFF on 2 ranks vs sequential FF, GPipe/1F1B bubbles, paper-net bytes PFF vs DFF (table + JSON)
	$(PY) -m ffpipe.bench_pff $(ARGS)

sweep: setup  ## one torchrun per (SCHEDULES x WORLD_SIZES) point, then results.md/.csv + plots.png
	$(PY) -m ffpipe.sweep --schedules $(SCHEDULES) --world-sizes $(WORLD_SIZES) experiment=mnist10k train.eval_every=0 $(ARGS)

lint: setup  ## ruff
	$(VENV)/bin/ruff check src tests

clean:  ## remove run outputs and caches (not the venv)
	rm -rf outputs multirun bench_results sweep_results .pytest_cache
