# Two entry points: `make run` (set up + the main job) and `make test` (set up + lint + tests).
# Setup is idempotent: a virtualenv in .venv, the package with its dev extra, and Fashion-MNIST from Debian.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RUN_ARGS ?= --method surrogate --noise pairflip40 --results-dir results/local

.PHONY: setup data run test test-all bench smoke clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Debian's dataset-fashion-mnist; where apt-get is unavailable nlbench falls back to --data-root / --download.
data:
	@test -f $(FMNIST) || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist) \
		|| echo "warning: could not install dataset-fashion-mnist; use --data-root or --download"

run: setup
	$(BIN)/nlbench run $(RUN_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

# One minute end to end on synthetic data: the `smoke` grid (nlbench/grids.toml), its plots and leaderboard, in a
# fresh temp folder (SMOKE_DIR=DIR to keep them somewhere else); fails if any step fails or leaves a bad record.
smoke: setup
	@dir="$${SMOKE_DIR:-$$(mktemp -d -t nlbench-smoke-XXXXXX)}" && set -e && \
	$(BIN)/nlbench grid --grid smoke --device cpu --results-dir "$$dir" && \
	$(BIN)/nlbench plot --results-dir "$$dir" && \
	$(BIN)/nlbench leaderboard --results-dir "$$dir" --out "$$dir/leaderboard.md" && \
	$(BIN)/nlbench results check --results-dir "$$dir" && \
	echo "smoke ok: records, plots and leaderboard in $$dir"

bench: setup
	$(BIN)/python -m pytest benchmarks -q --benchmark-only -p no:randomly

clean:
	rm -rf $(VENV) build *.egg-info
