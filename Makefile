# Two commands set everything up:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint clean-results

# The venv is rebuilt only when pyproject.toml changes, so a second `make` is fast.
# torch goes first with its exact pin: a CPU build from local disk, never a CUDA download.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/nhr run configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check nhr tests && $(BIN)/ruff format --check nhr tests

clean-results:
	rm -rf results/demo results/tiny
