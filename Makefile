# Two commands for a newcomer: `make demo` and `make test`. Each sets itself up in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# STAMP: everything (extra [dev]: the model libraries, bittensor, test tools); DEMO: the base install,
# what the embedded demo imports and nothing more
STAMP  := $(VENV)/.installed
DEMO   := $(VENV)/.installed-demo

.PHONY: setup demo ui test bench clean lock setup-locked check-lock

# The Dagster instance (runs, event log) lives in .dagster/, artifacts in artifacts/.
export DAGSTER_HOME ?= $(CURDIR)/.dagster
UI_PORT ?= 3000

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py threegen_dagster/splats/_spz_kernel.c | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -r docker/nodeps.in bittensor==9.12.2
	@# the project's own bytecode, as pip compiles every installed package's (an editable install is not, and
	@# with PYTHONDONTWRITEBYTECODE set every `threegen` would compile its 130 modules again)
	$(PY) -m compileall -q threegen_dagster >/dev/null
	touch $(STAMP) $(DEMO)

# `make demo` on a fresh clone installs the base dependencies only (no torch, diffusers, bittensor:
# the embedded backends never import them; test_lean_imports.py checks); `make test` after it installs
# the rest (its own stamp)
$(DEMO): pyproject.toml setup.py threegen_dagster/splats/_spz_kernel.c | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e .
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

# requirements.lock and requirements-nodeps.lock: every Python package of the base install and the [gpu] extra
# (plus docker/lock.in), hash-checked, for Python 3.11 on x86_64 Linux (glibc 2.35+): what docker/Dockerfile and
# setup-locked install. `make lock` resolves them again from PyPI with uv.
UV_COMPILE = $(VENV)/bin/uv pip compile --generate-hashes --python-version 3.11 \
             --python-platform x86_64-manylinux_2_35 --annotation-style line --quiet
lock: | $(PY)
	$(PY) -m pip install --quiet uv==0.13.9
	$(UV_COMPILE) pyproject.toml docker/lock.in --extra gpu -o requirements.lock
	$(UV_COMPILE) --no-deps docker/nodeps.in -o requirements-nodeps.lock

# a GPU workstation with the image's exact packages (hash-checked; the lock is the whole closure, so --no-deps)
setup-locked: | $(PY)
	$(PY) -m pip install --require-hashes --no-deps -r requirements.lock -r requirements-nodeps.lock
	$(PY) -m pip install --no-deps --no-build-isolation -e .

# the lock files installed into a fresh venv as the image does, then pip check and the imports (several GB)
check-lock:
	docker/check_lock.sh /tmp/threegen-lock-check

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .dagster artifacts inbox demo .pytest_cache test-artifacts
