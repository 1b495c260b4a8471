# calguide — every target sets up its own virtual environment on first use.
#   make run     the main job on the embedded default (digits), end to end
#   make test    lint + format check + the default test suite (what CI runs)
#   make help    all targets

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.calguide-installed
ARTIFACTS ?= artifacts
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e '.[dev]'
	@touch $@

.PHONY: setup
setup: $(STAMP) ## create .venv and install calguide with pinned versions (constraints.txt)

.PHONY: lint
lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check calguide tests experiments
	$(BIN)/ruff format --check calguide tests experiments

.PHONY: format
format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix calguide tests experiments
	$(BIN)/ruff format calguide tests experiments

.PHONY: test
test: lint ## lint, then the default test suite (slow tests excluded)
	$(BIN)/python -m pytest

.PHONY: test-full
test-full: lint ## lint, then every test including the slow ones
	$(BIN)/python -m pytest -m ""

.PHONY: train-denoiser
train-denoiser: $(STAMP) ## train (or resume / reuse) the tiny class-conditional UNet on digits
	$(BIN)/calguide-train paths.artifacts=$(abspath $(ARTIFACTS))

.PHONY: run
run: train-denoiser ## the embedded default end to end: digits denoiser -> unguided sample grid
	@echo "sample grid: $(abspath $(ARTIFACTS))/digits/unet_tiny/samples.png"

.PHONY: clean
clean: ## remove run logs (keeps trained artifacts and the venv)
	rm -rf logs outputs .pytest_cache .ruff_cache

.PHONY: clean-artifacts
clean-artifacts: ## remove trained models and grids (the next `make run` retrains)
	rm -rf $(ARTIFACTS)

.PHONY: distclean
distclean: clean clean-artifacts ## also remove the virtual environment
	rm -rf $(VENV)
