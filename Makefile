# tiesnb: the front door. `make help` lists the targets.
#   make study   set up, then run the study on the embedded default
#   make test    set up, then run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tiesnb-installed

.DEFAULT_GOAL := help
.PHONY: help setup test study bench clean-venv

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The environment: created once, refreshed when pyproject.toml changes. torch is the CPU build
# (pip takes it from this machine's local wheel store).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create or refresh .venv (idempotent)

test: setup  ## set up, then run the tests
	$(BIN)/python -m pytest -q tests

study: setup  ## set up, then run the study on the embedded default
	$(BIN)/python benchmarks/merge_bench.py --demo

bench: setup  ## merge benchmark (writes docs/performance.md)
	$(BIN)/python benchmarks/merge_bench.py --size-mb 300 --models 7

clean-venv:  ## remove the environment
	rm -rf $(VENV)
