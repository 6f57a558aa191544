# Quick start: `make demo` and `make test` each build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test mutants install lint bench bench-quick bench-memory clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/migrator demo --report demo-report.json

test: $(STAMP)
	$(BIN)/python -m pytest

# Guarantee-breaking mutants, each of which some test must catch (tests/MUTANTS.md). Minutes, so not in `test`.
mutants: $(STAMP)
	$(BIN)/python tests/mutants/run.py

lint: $(STAMP)
	$(BIN)/ruff check migrator mappings tests benchmarks

# Benchmarks need the peers and measuring tools of the `bench` extra (dlt, matplotlib, psutil, py-spy).
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py --full

bench-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py --quick

bench-memory: $(BENCH_STAMP)
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) .demo demo-report.json
