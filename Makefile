# calguide — every target sets up its own virtual environment on first use.
#   make run     the paper in miniature on the embedded default (bundled digits models)
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
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  %-40s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

# ---------------------------------------------------------------------------- the digits pipeline
A := $(abspath $(ARTIFACTS))
RUNLOGS := $(abspath logs)/make-run
DENOISER := $(A)/digits/unet_tiny/denoiser.pt
CLF_DIR := $(A)/digits/classifiers
CLF_CLEAN := $(CLF_DIR)/digits_resnet-clean-ce-s0.pt
CLF_SMECE := $(CLF_DIR)/digits_resnet-x0-smece-s0.pt
CLF_CE := $(CLF_DIR)/digits_resnet-x0-ce-s0.pt
CLF_EVAL := $(CLF_DIR)/digits_eval-clean-ce-s1.pt
CLF_NOISY := $(CLF_DIR)/digits_noisy-noisy-ce-s0.pt
CLF_NOISY_SMECE := $(CLF_DIR)/digits_noisy-noisy-smece-s0.pt
DENOISER_UNCOND := $(A)/digits/unet_tiny_uncond/denoiser.pt
TABLES := $(abspath logs)/tables
COMMON := paths.artifacts=$(A) paths.log_dir=$(abspath logs)
STRATEGIES ?= none,vanilla,rkl,fkl,js,hellinger
SCALE ?= 2.0

# The digits models come with calguide (calguide/bundled/digits, docs/bundled_models.md):
# `make run` and the digits tables use them as they are, with no training. The targets below
# are how they were made; a model trained into artifacts/ replaces the bundled one in every
# config (the configs take your own file when it exists).
.PHONY: train-denoiser
train-denoiser: $(STAMP) ## train (or resume / reuse) the tiny class-conditional UNet on digits
	$(BIN)/calguide-train $(COMMON)

.PHONY: train-bundle
train-bundle: $(DENOISER) $(DENOISER_UNCOND) $(CLF_CLEAN) $(CLF_NOISY) $(CLF_EVAL) ## train every bundled digits model into artifacts/ (~20 min on a 2-core CPU)

.PHONY: bundle
bundle: train-bundle ## copy the trained digits models into calguide/bundled with their manifest
	$(BIN)/python experiments/bundle_models.py --artifacts $(A)

$(DENOISER): | $(STAMP)
	$(MAKE) --no-print-directory train-denoiser

$(DENOISER_UNCOND): | $(STAMP)
	$(BIN)/calguide-train $(COMMON) denoiser=unet_tiny_uncond

$(CLF_NOISY): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) classifier=digits_noisy inputs.mode=noisy calibration=ce \
		init=null trainer.max_steps=600 optim.lr=2e-3

$(CLF_NOISY_SMECE): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) classifier=digits_noisy inputs.mode=noisy calibration=smece

$(CLF_CLEAN): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) calibration=ce inputs.mode=clean init=null \
		trainer.max_steps=600 optim.lr=2e-3 evaluation.diagrams=[clean]

$(CLF_EVAL): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) classifier=digits_eval calibration=ce inputs.mode=clean \
		init=null seed=1 trainer.max_steps=600 optim.lr=2e-3 evaluation.diagrams=[clean]

$(CLF_SMECE): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) calibration=smece

$(CLF_CE): | $(STAMP)
	$(BIN)/calguide-calibrate $(COMMON) calibration=ce

.PHONY: calibrate
calibrate: $(CLF_SMECE) $(CLF_CE) ## fine-tune the digits classifier on x̂₀: CE + λ·Smooth ECE (the paper's loss) vs CE only
	@echo; echo "Calibration of the digits classifier on x̂₀ (held-out, fixed noise):"
	@$(BIN)/calguide-calibration-report \
		$(CLF_DIR)/digits_resnet-x0-ce-s0/calibration.json \
		$(CLF_DIR)/digits_resnet-x0-smece-s0/calibration.json

.PHONY: sample
sample: $(CLF_SMECE) ## guided digits samples per strategy (Smooth-ECE-calibrated classifier) + metrics
	@echo; echo "Calibration of the guidance classifier on x̂₀ (held-out, fixed noise; before → after):"
	@$(BIN)/calguide-calibration-report $(CLF_DIR)/digits_resnet-x0-smece-s0/calibration.json
	$(BIN)/calguide-sample --multirun $(COMMON) guidance=$(STRATEGIES) guidance.scale=$(SCALE) \
		hydra.sweep.dir=$(RUNLOGS)/sample
	$(BIN)/python experiments/diagnostics_figure.py $(RUNLOGS)/sample \
		-o $(RUNLOGS)/diagnostics.png --title "digits: guidance diagnostics (scale $(SCALE))"

.PHONY: run
run: $(STAMP) ## the paper in miniature on the bundled models: calibration, every strategy, verdicts
	$(BIN)/calguide-miniature --out $(RUNLOGS) $(COMMON)

# ---------------------------------------------------------------------------- tables
# make reproduce-table-<name>: run a conf/experiment/<name> sweep into logs/tables/<name>/ and
# aggregate it (table.md, table.csv, runs.csv, plots, verdicts). Finished samples are reused from
# artifacts/, so a rerun only recomputes what changed. DIFFUSION=dpmpp samples the table with
# that conf/diffusion option (its own grid: 20 network evaluations for dpmpp and dpmpp_sde)
# instead of the recipe's DDPM chain, NFE=15 with another step count in the option's grid
# family (logsnr15:6 for the DPM-Solver options, "15" for DDPM): for sweeps and exploration
# (docs/few_step.md); the paper's protocol stays DDPM 250.
NFE_GRID = $(if $(filter dpmpp%,$(DIFFUSION)),logsnr$(NFE):6,$(NFE))
.PHONY: print-NFE_GRID
print-NFE_GRID: ## the respacing NFE= passes for DIFFUSION= (tests read it)
	@echo $(NFE_GRID)
SAMPLER_ARGS := $(if $(DIFFUSION),diffusion=$(DIFFUSION)) $(if $(NFE),diffusion.respacing=$(NFE_GRID))

define run_table
	@$(BIN)/calguide-preflight $(1) $(COMMON) $(SAMPLER_ARGS)
	rm -rf $(TABLES)/$(1)
	$(BIN)/calguide-sample --multirun $(COMMON) experiment=$(1) $(SAMPLER_ARGS) $(TABLE_ARGS)
	$(BIN)/calguide-aggregate $(TABLES)/$(1)
endef

.PHONY: reproduce-table-digits-baselines
reproduce-table-digits-baselines: $(STAMP) ## digits: unguided / ADM-G / EluCD, 3 seeds, cond + uncond
	$(call run_table,digits_baselines)

.PHONY: reproduce-table-digits-calibration
reproduce-table-digits-calibration: $(CLF_NOISY_SMECE) ## digits: ADM-G before vs after Smooth ECE fine-tuning
	$(call run_table,digits_calibration)

.PHONY: reproduce-table-digits-strategies
reproduce-table-digits-strategies: $(CLF_SMECE) ## digits: every strategy, 3 seeds, cond + uncond
	$(call run_table,digits_strategies)

.PHONY: reproduce-table-digits-scale-sweep
reproduce-table-digits-scale-sweep: $(CLF_SMECE) ## digits: divergence × scale, 3 seeds
	$(call run_table,digits_scale_sweep)

.PHONY: sweep
sweep: reproduce-table-digits-scale-sweep ## the divergence × guidance-scale sweep on digits (+ FID-vs-scale plot)

# ImageNet 128: the paper's tables (PAPER.md §7, published numbers in calguide/tools/published.yaml).
# The preflight lists every missing official file and stops (exit 2) before any run.
IMAGENET_TABLES := calibration sampling main alpha-eps-sweep scale-sweep
.PHONY: $(addprefix reproduce-table-imagenet128-,$(IMAGENET_TABLES))
reproduce-table-imagenet128-calibration: $(STAMP) ## ImageNet 128, 10K: ADM-G, classifier fine-tuned with CE vs CE + Smooth ECE
	$(call run_table,imagenet128_calibration)
reproduce-table-imagenet128-sampling: $(STAMP) ## ImageNet 128, 10K, ResNet-50: EluCD, tilted, entropy, RKL
	$(call run_table,imagenet128_sampling)
reproduce-table-imagenet128-main: $(STAMP) ## ImageNet 128, 50K: ADM-G, EluCD R50/R101, FKL/RKL/JS/Hellinger R101
	$(call run_table,imagenet128_main)
reproduce-table-imagenet128-alpha-eps-sweep: $(STAMP) ## ImageNet 128, 10K: divergence × α × ε, ResNet-101
	$(call run_table,imagenet128_alpha_eps_sweep)
reproduce-table-imagenet128-scale-sweep: $(STAMP) ## ImageNet 128, 10K: strategy × scale, ResNet-101
	$(call run_table,imagenet128_scale_sweep)

.PHONY: clean
clean: ## remove run logs (keeps trained artifacts and the venv)
	rm -rf logs outputs .pytest_cache .ruff_cache

.PHONY: clean-artifacts
clean-artifacts: ## remove trained models and grids (the next `make run` retrains)
	rm -rf $(ARTIFACTS)

.PHONY: distclean
distclean: clean clean-artifacts ## also remove the virtual environment
	rm -rf $(VENV)

.PHONY: lab
lab: $(STAMP) ## Gaussian-mixture lab: every strategy vs the exact target (< 1 min; logs/lab/…)
	$(BIN)/calguide-lab paths.log_dir=$(abspath logs)

# ---------------------------------------------------------------------------- the GPU check
# A lent accelerator's image has torch, lightning and torchmetrics but not these pure-Python
# packages: `make gpu-wheels` builds them (pinned) into .whl/, which the device command carries.
GPU_OUT ?= gpu-check
GPU_WHEELS := antlr4-python3-runtime hydra-core omegaconf torch_fidelity
.PHONY: gpu-check gpu-wheels
gpu-check: ## the prepared GPU check (needs CUDA; docs/performance.md): ADM-128 steps, fast paths, metrics -> $(GPU_OUT)/
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) experiments/gpu_check.py --out $(GPU_OUT)

gpu-wheels: $(STAMP) ## build the wheels the GPU machine lacks into .whl/ (versions from constraints.txt)
	rm -rf .whl
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w .whl \
		$(foreach p,$(GPU_WHEELS),$(shell grep -i '^$(p)==' constraints.txt))
	@ls .whl

.PHONY: bench
bench: $(STAMP) ## guided-step cost per strategy vs the floor (digits pair; writes bench/*.json, *.md)
	$(BIN)/python experiments/bench.py --pair digits --batch 50 --out bench
