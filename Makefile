# Two commands set up a fresh machine: `make run` (the main job on the embedded default) and
# `make test`. Both create .venv first when it is missing (`make setup`, idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export ITERATIVE_DO_NOT_TRACK := do-not-track
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site_cache
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[imagebind]'
	touch $(STAMP)

run: setup
	$(BIN)/art2mus repro

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf data mlflow.db mlartifacts .prefect .dvcstore bench/results
