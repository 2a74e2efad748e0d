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
# where the study's runs go: local (this machine) or a cluster profile in workflow/profiles/
EXECUTOR ?= local
# the workflow (workflow/Snakefile) is the study's DAG; this is its front door
WORKFLOW = $(TIESNB) workflow --study $(STUDY) --executor $(EXECUTOR)

.DEFAULT_GOAL := help
.PHONY: help setup data check-data test study probe train evaluate merge_sweep interference ablations num_tasks steps \
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
# the study: a Snakemake workflow (workflow/Snakefile, planned by tiesnb/workflow.py), one job per
# notebook run, redone when its notebook, its parameters, the study's settings, the package or a
# run it reads changed. Here it runs as many jobs at once as the cores allow (each asks for half of
# them, and a GPU where the study says so); EXECUTOR=slurm makes each one a Slurm job.

study: setup  ## set up, then run the study (STUDY=default; EXECUTOR=local|slurm|kubernetes) and write figures/ and tables
	@start=$$(date +%s); \
	$(TIESNB) data fetch --study $(STUDY) && \
	$(WORKFLOW) && \
	{ case "$(STUDY)" in default|vision) $(TIESNB) findings ;; esac; } && \
	echo "study $(STUDY): up to date, $$(( $$(date +%s) - start )) s"

studies: setup  ## every committed study, one after the other: figures/ (text) and figures/vision/
	$(MAKE) --no-print-directory study STUDY=default
	$(MAKE) --no-print-directory study STUDY=vision

probe evaluate merge_sweep interference ablations num_tasks train: setup  ## one step and what it needs (train: every model)
	$(WORKFLOW) $@
steps:  ## one step at a time: make probe | train | evaluate | merge_sweep | interference | ablations | num_tasks
	@echo "make probe | train | evaluate | merge_sweep | interference | ablations | num_tasks  (STUDY=$(STUDY))"

fig-%:  ## one figure or table and what it needs, e.g. make fig-table1, make fig-sign_conflicts
	@nb=$$($(BIN)/python -m tiesnb.pipeline owner $*) && $(WORKFLOW) $$nb

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
