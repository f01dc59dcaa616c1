# Seoul public-service AI pilot testbed. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
# A local Ray (no RAY_ADDRESS) listens on 127.0.0.1 only when this is set before `ray` is first imported.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= $(if $(RAY_ADDRESS),1,0)

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint bench mlflow-ui clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## install what is missing: bubblewrap and a Hangul font (apt-get), the venv and the pinned stack
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing bubblewrap (sandbox isolation) with apt-get"; \
	    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null)) \
	      || { echo "apt-get could not install bubblewrap: install it by hand (Debian/Ubuntu package 'bubblewrap')"; exit 1; }; \
	  else \
	    echo "bubblewrap is missing and this is not root: run 'sudo apt-get install bubblewrap', then make again"; exit 1; \
	  fi; }
	@test -e /usr/share/fonts/truetype/nanum || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing fonts-nanum (Hangul in the scorecards' plots) with apt-get"; \
	    apt-get install -y -q fonts-nanum >/dev/null 2>&1 || echo "fonts-nanum not installed: Korean plot labels show as boxes"; \
	  else \
	    echo "fonts-nanum is missing and this is not root: plots still work, but Hangul shows as boxes; run 'sudo apt-get install fonts-nanum' for it"; \
	  fi; }

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -e '.[dev]'
	@touch $@

demo: setup ## build, submit and evaluate the example bundles end to end (local Ray, MLflow under mlflow/)
	$(BIN)/testbed demo

test: setup ## run the whole test suite (unit + integration with real bentoml/Ray/MLflow/bubblewrap)
	$(BIN)/python -m pytest --durations=15

test-fast: setup ## run the unit tests only
	$(BIN)/python -m pytest -m "not slow"

lint: setup ## ruff check
	$(BIN)/ruff check .

bench: setup ## measure evaluation wall time and harness overhead; writes benchmarks/report.md
	$(BIN)/python benchmarks/bench.py

mlflow-ui: setup ## open the MLflow UI on MLFLOW_TRACKING_URI (default: the local store) at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow/mlflow.db}" --host 127.0.0.1 --port 5000

clean: ## remove the local stores (submissions, BentoML home, MLflow store)
	rm -rf var mlflow/mlflow.db mlflow/artifacts
