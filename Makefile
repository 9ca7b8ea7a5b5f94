# TicketLab. Two set-up commands: `make run` (the default job) and `make test`.
SHELL      := /bin/bash
VENV       ?= .venv
PY         := $(VENV)/bin/python
SHARED     ?= ../shared/data
DATA_COPY  ?= data
# data/ is the default data root (paths.data_dir) of every command run from here, so no command needs
# DATA_DIR; the tests read DATA_DIR, pointed at the prepared copy when it exists.
DATA_DIR   ?= $(if $(wildcard $(SHARED)),$(abspath $(DATA_COPY)),)
ARGS       ?=

.PHONY: help install data run test test-gpu lint bench chaos reproduce claims clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# the fused CPU mask kernels: built once per environment here (about 20-40 s), not inside a first run
	-$(PY) -m ticketlab.sparsity.kernels
	@touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev extra

data:  ## writable, git-ignored copy of ../shared/data in data/, the default data root (MNIST copied, CIFAR-10 unpacked)
	@if [ -d "$(SHARED)" ]; then \
	  mkdir -p $(DATA_COPY); \
	  for d in MNIST FashionMNIST; do \
	    if [ -d "$(SHARED)/$$d" ] && [ ! -d "$(DATA_COPY)/$$d/raw" ]; then \
	      mkdir -p $(DATA_COPY)/$$d && cp -r "$(SHARED)/$$d/raw" $(DATA_COPY)/$$d/ && chmod -R u+w $(DATA_COPY)/$$d; fi; \
	  done; \
	  if [ -f "$(SHARED)/cifar10-jpeg.tar.gz" ] && [ ! -d "$(DATA_COPY)/cifar10-jpeg/test" ]; then \
	    tar xzf "$(SHARED)/cifar10-jpeg.tar.gz" -C $(DATA_COPY); fi; \
	  echo "data copy ready in $(abspath $(DATA_COPY))"; \
	else echo "no $(SHARED): real-data tests will skip (they fail in CI)"; fi

run: install  ## run train.py with the defaults (edge-popup, MLP, digits); extra overrides via ARGS="..."
	$(PY) train.py $(ARGS)

test: install data  ## install, prepare the data copy, run pytest
	DATA_DIR="$(DATA_DIR)" $(PY) -m pytest $(ARGS)

test-gpu: install data  ## the device-parametrized tests (marker devices) on CUDA; needs a GPU
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA device here')"
	DATA_DIR="$(DATA_DIR)" $(PY) -m pytest -m devices -k cuda $(ARGS)

lint: install  ## ruff
	$(VENV)/bin/ruff check .

bench: install data  ## benchmarks: make bench ARGS=bench.what=suite (LeNet, Conv-6, SynFlow, PHEW; one table)
	DATA_DIR="$(DATA_DIR)" $(PY) scripts/bench.py $(ARGS)

chaos: install data  ## kill runs at random moments, relaunch them, compare with uninterrupted twins (minutes)
	DATA_DIR="$(DATA_DIR)" $(PY) scripts/chaos.py $(ARGS)

reproduce: install data  ## a paper's table and plots: make reproduce EXP=synflow/layer_collapse [ARGS=--smoke]
	@test -n "$(EXP)" || { $(PY) scripts/reproduce.py --list; echo "set EXP=<one of the above>"; exit 2; }
	DATA_DIR="$(DATA_DIR)" $(PY) scripts/reproduce.py $(EXP) $(ARGS)

claims: install data  ## every seed paper's claim at small scale, 5 seeds, 2 jobs at a time (about an hour): outputs/experiments/claims/summary.md
	DATA_DIR="$(DATA_DIR)" TICKETLAB_LOCAL_JOBS=2 $(PY) scripts/reproduce.py claims hydra/launcher=local $(ARGS)

clean:  ## remove caches (keeps .venv, .data and outputs/)
	rm -rf .pytest_cache .ruff_cache .cache src/*.egg-info
