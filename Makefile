# `make run` and `make test` set themselves up: the venv is built from requirements.txt
# on first use (and rebuilt when requirements.txt changes).
VENV := .venv
STAMP := $(VENV)/.installed-from-requirements
PYTHON ?= python3

export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: help setup run reset serve metrics test test-fast bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install requirements.txt

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: $(STAMP)  ## run the pipeline (dvc repro), print each model's accuracy
	@python -m stages.refetch
	dvc repro
	@echo
	@python -m stages.summary

reset: $(STAMP)  ## back to the committed params, outputs matching them (no retraining of what ran here)
	@python -m stages.reset

serve: $(STAMP)  ## draw a digit at http://127.0.0.1:8000 (PORT=N, HOST=H) and watch every model answer
	@python -m stages.serve $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

metrics: $(STAMP)  ## each model's accuracy beside the book's, from metrics/ as it is now (held to dvc.lock and the checkpoints)
	@python -m stages.summary

test: $(STAMP)  ## run the tests (what CI runs)
	python -m pytest

test-fast: $(STAMP)  ## the tests that run no pipeline, most on tiny data (about a minute on 2 cores)
	python -m pytest -m "not pipeline"

bench: $(STAMP)  ## benchmark: Learner vs the chapter's loop, CNN vs fastai, queue sweeps, dvc repro, each stage's start
	python -m bench.bench

clean:  ## remove the venv (outputs stay; `dvc gc` manages the cache)
	rm -rf $(VENV)
