# Two commands set up a fresh machine: `make run` (the main job on the embedded default) and
# `make test`. Both create .venv first when it is missing (`make setup`, idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
# The offline defaults (no analytics, no cloud metadata lookup), spelled once in art2mus/env.py; a variable
# already in the environment wins.
$(foreach setting,$(shell $(PYTHON) art2mus/env.py),$(eval export $(setting)))
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site_cache
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup browser postgres run test test-fast bench clean stack-up stack-down stack-status

setup: $(STAMP)

# pip byte-compiles what it installs: where PYTHONDONTWRITEBYTECODE is set (CI's image sets it) nothing compiled
# at import is kept, and every stage, flow and test process would compile its ~2,650 modules again.
$(STAMP): pyproject.toml constraints.txt requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[imagebind,vggish]'
	touch $(STAMP)

# The report's browser test (tests/e2e/test_report_browser.py) needs headless Chromium: Debian's
# package, installed here when missing. Without root or sudo it says so and goes on; the test then
# fails under CI=true with the same reason (and skips elsewhere).
browser:
	@if command -v chromium >/dev/null || test -x /usr/bin/chromium; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  || echo "make: could not install chromium with apt-get; the browser test will fail under CI"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  || echo "make: could not install chromium with sudo apt-get; the browser test will fail under CI"; \
	else \
	  echo "make: chromium is missing and needs root to install (apt-get install chromium);" \
	    "the browser test will fail under CI and skip elsewhere"; \
	fi

# The local team stack (infra/local/README.md) runs MLflow on PostgreSQL: the system's server binaries,
# installed here when missing (as for `browser`). Without root or sudo it says so; the stack then
# needs `--backend sqlite` and the integration test fails under CI with that reason.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
	  || echo "make: could not install postgresql with apt-get; the team-stack test will fail under CI"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
	  || echo "make: could not install postgresql with sudo apt-get; the team-stack test will fail under CI"; \
	else \
	  echo "make: PostgreSQL is missing and needs root to install (apt-get install postgresql)"; \
	fi

STACK_STATE ?= infra/local/.state

stack-up: setup postgres
	$(BIN)/python -m infra.local.stack up --state-dir $(STACK_STATE)

stack-down:
	$(BIN)/python -m infra.local.stack down --state-dir $(STACK_STATE)

stack-status:
	$(BIN)/python -m infra.local.stack status --state-dir $(STACK_STATE)

run: setup
	$(BIN)/art2mus retrain

# The whole suite on TEST_WORKERS pytest-xdist workers (0: one process). The pipeline fixture's `dvc repro`
# is built once, by one worker, while the other runs the tests that do not need it; then both share the
# tests that do (tests/conftest.py).
# Each worker gets one CPU thread (OMP_NUM_THREADS=1), and the stages it starts follow it (`threads: auto`),
# so two workers use CI's 2 cores without oversubscribing them.
TEST_WORKERS ?= 2
TEST_XDIST = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# mypy (about 2 minutes on one core from a fresh clone's cold cache) runs beside the suite; its report follows
# the suite's, and either failing fails `make test`.
test: setup browser postgres
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	types_log=$$(mktemp); $(BIN)/mypy > $$types_log 2>&1 & types=$$!; \
	$(BIN)/python -m pytest $(TEST_XDIST); tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat $$types_log; rm -f $$types_log; \
	test $$tests -eq 0 && test $$typed -eq 0

# The edit-test loop: everything not marked slow (no pipeline, servers or training runs).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow" $(TEST_XDIST)

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf data mlflow.db mlartifacts .prefect .dvcstore bench/results

# The rehearsal's model part: the real stack built at full size from configs (random weights), its costs
# measured into reports/rehearsal/ (CPU: ~15-20 min; CUDA: also the batch fit under a capped allocator).
rehearse-model: setup
	$(BIN)/python -m art2mus.rehearsal.model_part --size real --out reports/rehearsal

# The full-size rehearsal of the real profile (README "The real profile"): the real retrain flow on
# random-weight AudioLDM2-music + CLIP ViT-L/14 (+ ImageBind-huge), served once, and the model part's
# figures, into reports/rehearsal/. rehearse-ci: the same flow at the smallest sizes (also a test in `make test`).
rehearse: setup
	$(BIN)/python -m art2mus.rehearsal.flow run --mode full --out reports/rehearsal

rehearse-ci: setup
	$(BIN)/python -m art2mus.rehearsal.flow run --mode ci --out reports/rehearsal-ci

# For a bare GPU machine (torch + transformers, no registry): the wheels the model part needs beyond
# them, to carry with the repository. There: pip install --no-deps dist/gpu-wheels/*.whl, then
# python -m art2mus.rehearsal.model_part --size real --device cuda --out reports/rehearsal-gpu
gpu-wheels: setup
	rm -rf dist/gpu-wheels
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 --platform any -d dist/gpu-wheels diffusers==0.42.1
