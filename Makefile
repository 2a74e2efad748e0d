# tiesnb: the front door. `make help` lists the targets.
#   make study              set up, then run the whole study on the embedded default (5 seeds)
#   make study STUDY=quick  the same with one seed and smaller grids
#   make study STUDY=vision the embedded vision study (EfficientNet-Lite0, 6 image tasks, 3 seeds)
#   make check-data         ask the registries whether every pinned data source is still served
#   make studies            every committed figure: the text study, then the vision study
#   make test               set up, then run the tests
#   make study STUDY=smoke  the same pipeline on a few examples (what the tests run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TIESNB := $(BIN)/tiesnb
STAMP  := $(VENV)/.tiesnb-installed
STUDY  ?= default
# notebook runs at a time, and torch threads for each: every core busy, none oversubscribed (two
# single-threaded runs on 2 cores do ~30 % more work than one run on both)
JOBS   ?= 2
THREADS := $(shell n=$$(( $$(nproc) / $(JOBS) )); [ $$n -ge 1 ] && echo $$n || echo 1)
P      := params/$(STUDY)
# a study may start from another (`inherit: default` in its study.yaml): the parameter files it
# lacks come from that one
INHERIT := $(shell sed -n 's/^inherit: *\([^ #]*\).*/\1/p' $(P)/study.yaml 2>/dev/null)
PB     := $(if $(INHERIT),params/$(INHERIT),$(P))
pfile   = $(firstword $(wildcard $(P)/$(1).yaml) $(PB)/$(1).yaml)
STAMPS := runs/$(STUDY)/stamps
SRC    := $(shell find tiesnb -name '*.py') pyproject.toml
# the multitask model (the longest run) first: two at a time, the runs then end together
# a study's own train-*.yaml files, else its parent's (a derived study with other tasks names its own)
TRAINS := $(sort $(notdir $(or $(wildcard $(P)/train-*.yaml),$(wildcard $(PB)/train-*.yaml))))
TRAIN  := $(patsubst %.yaml,$(STAMPS)/%.json,$(filter train-multitask.yaml,$(TRAINS)) $(filter-out train-multitask.yaml,$(TRAINS)))
SETTINGS := $(P)/study.yaml $(PB)/study.yaml

.DEFAULT_GOAL := help
.PHONY: help setup data check-data test study notebooks probe train evaluate merge_sweep interference ablations num_tasks steps \
        lab report bench bench-llm clean-study clean-venv studies

help:  ## list the targets
	@grep -E '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------------------------------------
# environment and data

# Created once, refreshed when pyproject.toml changes. torch is the CPU build (pip takes it from
# this machine's local wheel store; elsewhere from PyPI).
$(STAMP): pyproject.toml Makefile requirements-nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# promptsource (the paper-scale prompts) and EfficientNet-Lite0's code, hash-pinned, without
	@# their declared dependencies (requirements-nodeps.txt says why)
	$(BIN)/python -m pip install -q --no-deps --ignore-requires-python --require-hashes -r requirements-nodeps.txt
	@touch $(STAMP)

setup: $(STAMP)  ## create or refresh .venv (idempotent)

data: setup  ## download what the study reads into .cache/data (once; checksums and fingerprints verified): STUDY=...
	$(TIESNB) data fetch --study $(STUDY)

check-data: setup  ## ask the registries whether every pinned source of every asset is still served (CI runs it)
	$(TIESNB) data check

# ---------------------------------------------------------------------------------------------
# tests

test: setup  ## set up, then run the tests
	$(TIESNB) data fetch --all
	$(BIN)/python -m pytest -q tests

# ---------------------------------------------------------------------------------------------
# the study: one stamp per notebook run; a run is redone when its notebook, its parameters, the
# study's settings, the package or an upstream run changed. `make study` runs JOBS of them at a
# time, each with nproc / JOBS torch threads (TIESNB_THREADS); the output lines carry each run's name.

study: setup  ## set up, then run the study (STUDY=default) and write figures/ and tables
	@start=$$(date +%s); \
	$(TIESNB) data fetch --study $(STUDY) && \
	TIESNB_THREADS=$${TIESNB_THREADS:-$(THREADS)} $(MAKE) --no-print-directory -j$(JOBS) notebooks STUDY=$(STUDY) && \
	{ case "$(STUDY)" in default|vision) $(TIESNB) findings ;; esac; } && \
	echo "study $(STUDY): up to date, $$(( $$(date +%s) - start )) s"

studies: setup  ## every committed study, one after the other: figures/ (text) and figures/vision/
	$(MAKE) --no-print-directory study STUDY=default
	$(MAKE) --no-print-directory study STUDY=vision

# merge_sweep → ablations is the longest chain: it goes first
notebooks: $(STAMPS)/merge_sweep.json $(STAMPS)/evaluate.json $(STAMPS)/num_tasks.json $(STAMPS)/interference.json \
           $(STAMPS)/ablations.json

.SECONDEXPANSION:
$(STAMPS)/probe.json: notebooks/probe.py $$(call pfile,probe) $(SETTINGS) $(SRC) | $(STAMP)
	$(TIESNB) run probe --study $(STUDY)

$(STAMPS)/train-%.json: notebooks/train.py $$(call pfile,train-$$*) $(SETTINGS) $(STAMPS)/probe.json $(SRC)
	$(TIESNB) run train --study $(STUDY) --params $(call pfile,train-$*)

$(STAMPS)/evaluate.json $(STAMPS)/merge_sweep.json $(STAMPS)/interference.json $(STAMPS)/num_tasks.json: $(STAMPS)/%.json: notebooks/%.py $$(call pfile,$$*) $(SETTINGS) $(TRAIN) $(SRC)
	$(TIESNB) run $* --study $(STUDY)

$(STAMPS)/ablations.json: $(STAMPS)/%.json: notebooks/%.py $$(call pfile,$$*) $(SETTINGS) $(STAMPS)/merge_sweep.json $(SRC)
	$(TIESNB) run $* --study $(STUDY)

probe: $(STAMPS)/probe.json  ## one step: fit the heads
train: $(TRAIN)  ## one step: train every task model and the multitask model
evaluate merge_sweep interference ablations num_tasks: %: $(STAMPS)/%.json
steps:  ## one step at a time: make probe | train | evaluate | merge_sweep | interference | ablations | num_tasks
	@echo "make probe | train | evaluate | merge_sweep | interference | ablations | num_tasks  (STUDY=$(STUDY))"

fig-%:  ## one figure or table and what it needs, e.g. make fig-table1, make fig-sign_conflicts
	@nb=$$($(BIN)/python -m tiesnb.pipeline owner $*) && $(MAKE) --no-print-directory $$nb STUDY=$(STUDY)

# ---------------------------------------------------------------------------------------------
# reading the results

# the .py sources open as notebooks and save back to themselves (jupytext.toml); JupyterLab's
# settings start from lab/settings, copied to runs/lab so that changing them leaves the sources alone
lab: setup  ## open JupyterLab on the notebooks (each .py source opens as a notebook; saving writes the .py)
	@mkdir -p runs/lab && cp -rn lab/settings runs/lab/
	JUPYTERLAB_SETTINGS_DIR=$(CURDIR)/runs/lab/settings $(BIN)/jupyter lab notebooks

report: setup  ## the study as a static site (MkDocs): findings, tables, figures, provenance, notebooks → runs/report/index.html
	$(TIESNB) report

bench: setup  ## merge benchmark, fp32 and bf16 at 7 × 1 GB, bf16 at 7 × 135 MB: time and peak RSS against baselines (docs/performance.md)
	$(BIN)/python benchmarks/merge_bench.py --size-mb 1000 --models 7 --repeats 3
	$(BIN)/python benchmarks/merge_bench.py --size-mb 1000 --models 7 --repeats 3 --dtype bfloat16
	$(BIN)/python benchmarks/merge_bench.py --size-mb 135 --models 7 --repeats 3 --dtype bfloat16

bench-llm: setup  ## tiesnb beside mergekit on a ~1.5 B-parameter sharded bf16 Llama layout (~15 GB of scratch, removed after)
	$(BIN)/python benchmarks/llm_bench.py --layers 16 --models 3 --repeats 3 --mergekit-repeats 1

clean-study:  ## forget the study's runs (checkpoints, caches, executed notebooks): STUDY=...
	rm -rf runs/$(STUDY)

clean-venv:  ## remove the environment
	rm -rf $(VENV)
