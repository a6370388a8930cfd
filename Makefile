# safegap: `make demo` runs the organism pipeline end to end; `make test` passes the tests.
# Both create .venv if missing and install torch (the CPU wheel here) and the package; a second
# run reinstalls nothing (the stamp file only changes when pyproject.toml does).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.safegap-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# `make bench DEVICE=cuda` runs every benchmark on the GPU (DTYPE=auto: bfloat16 there, float32 on CPU).
DEVICE ?= cpu
DTYPE ?= auto
BENCH_STAMP := $(VENV)/.safegap-bench-deps

.PHONY: install demo test lint typecheck unit bench bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/safegap demo --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

# Optional peer library for bench_steer_peers.py. steering-vectors 0.12.2 pins transformers<5,
# so it goes in without its dependencies (scikit-learn, which it imports, goes in with the bench
# extra); torch must still be the pinned wheel afterwards.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps steering-vectors==0.12.2
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')"
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do $(BIN)/python $$b --device $(DEVICE) --dtype $(DTYPE) || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
