# Two commands for a newcomer: `make demo` and `make test`. Each sets itself up in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# STAMP: everything (extra [dev]: the model libraries, bittensor, test tools); DEMO: the base install,
# what the embedded demo imports and nothing more
STAMP  := $(VENV)/.installed
DEMO   := $(VENV)/.installed-demo

.PHONY: setup demo ui test bench clean

# The Dagster instance (runs, event log) lives in .dagster/, artifacts in artifacts/.
export DAGSTER_HOME ?= $(CURDIR)/.dagster
UI_PORT ?= 3000

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps hy3dgen==2.0.2 open_clip_torch==3.3.0 timm==1.0.31 bittensor==9.12.2
	touch $(STAMP) $(DEMO)

# `make demo` on a fresh clone installs the base dependencies only (no torch, diffusers, bittensor:
# the embedded backends never import them; test_lean_imports.py checks); `make test` after it installs
# the rest (its own stamp)
$(DEMO): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(DEMO)

demo: $(DEMO)
	$(VENV)/bin/threegen generate "a wooden chair" --seed 42 --out demo
	@echo "See the run and its assets in the UI: make ui, then open http://127.0.0.1:3000"

# `dg dev` (Dagster's webserver and daemon for the [tool.dg] project) from the project's venv, activated
ui: $(STAMP)
	$(PY) -m threegen_dagster.defs.instance >/dev/null
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/dg dev -h 127.0.0.1 -p $(UI_PORT)

test: $(STAMP)
	@# PostgreSQL for the instance tests (Debian's package); the tests start their own server and stop it
	bash scripts/install_postgres.sh
	@# the SN17 comp 2 module checker's Node packages (three@0.183.2, acorn, ...) from the npm registry
	bash scripts/install_node_checker.sh
	@# Chromium for the viewer's browser tests (Debian's package); without it they skip, saying why
	scripts/install_browser.sh >/dev/null || echo "make test: no Chromium: the viewer's browser tests will be skipped"
	$(PY) -m pytest

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .dagster artifacts inbox demo .pytest_cache test-artifacts
