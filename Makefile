# Two commands set everything up:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint lab notebook-filter clean-results

# Notebook outputs stay out of git: .gitattributes routes *.ipynb through this filter,
# which strips outputs, execution counts, widget state and kernel details on `git add`
# and `git status` (cell ids kept), so a notebook saved from the browser with its outputs
# leaves the checkout clean. Configured in this clone's git config (not outside git).
STRIP := $(abspath $(BIN))/python -m nbstripout --keep-id --extra-keys "metadata.language_info.codemirror_mode metadata.language_info.file_extension metadata.language_info.mimetype metadata.language_info.nbconvert_exporter metadata.language_info.pygments_lexer metadata.language_info.version cell.metadata.execution"

# The venv is rebuilt only when pyproject.toml changes, so a second `make` is fast.
# torch goes first with its exact pin: a CPU build from local disk, never a CUDA download.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

notebook-filter: $(STAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '$(STRIP)' && \
	  git config filter.nbstripout.smudge cat && \
	  git config diff.ipynb.textconv '$(STRIP) -t'; \
	fi

run: $(STAMP) notebook-filter
	$(BIN)/nhr run configs/demo.yaml

# JupyterLab on the repository root (results/ browsable); jupyter/overrides.json makes
# it save widget state with a notebook, so progress bars render when it is reopened.
lab: $(STAMP) notebook-filter
	$(BIN)/jupyter lab --LabApp.app_settings_dir=$(CURDIR)/jupyter

# Two workers, each test file on one of them (module and Ray-cluster fixtures stay whole).
test: $(STAMP) notebook-filter
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check nhr tests && $(BIN)/ruff format --check nhr tests

clean-results:
	rm -rf results/demo results/tiny
