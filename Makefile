# Two commands do all set-up on a fresh machine (Python 3.10+ with venv and pip):
#   make run    -> creates .venv, installs cl_bench, runs ER on Split-Digits
#   make test   -> creates .venv, installs cl_bench with test tools, runs ruff and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install run test lint regress bench clean

$(STAMP): pyproject.toml requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cl-bench run

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

# Rerun the golden baselines (results/golden) and fail if a metric moved beyond its tolerance.
# After an intended change: $(BIN)/cl-bench regress --against results/golden --update  (shows the diff)
regress: $(STAMP)
	$(BIN)/cl-bench regress --against results/golden

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_split_mnist.py

clean:
	rm -rf $(VENV) runs build *.egg-info
