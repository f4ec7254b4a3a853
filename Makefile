# exolegs: `make run` starts everything on embedded defaults, `make test` runs the suite.
# `make run` installs only what running needs (the package and its embedded Redis);
# `make test` adds the test and lint tools. Each has its own stamp, redone when
# pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv (from PyPI, into .venv like everything else) installs in seconds what pip
# takes a minute for; where it cannot be installed, pip does the work. `make run
# UV=` installs with pip alone, e.g. where only a pip.conf index is reachable.
UV     ?= uv
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
UV_PIP := $(BIN)/python -m uv pip install --quiet --python $(BIN)/python
ifeq ($(UV),)
INSTALL := $(PIP)
else
INSTALL := $$($(BIN)/python -m uv --version >/dev/null 2>&1 && echo '$(UV_PIP)' || echo '$(PIP)')
endif
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench venv venv-run lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(if $(UV),-$(PIP) 'uv>=0.5')
	@install="$(INSTALL)"; set -x; $$install -e '.[embedded]'
	@touch $@

$(TEST_STAMP): pyproject.toml tests/plugin_example/pyproject.toml $(RUN_STAMP)
	@install="$(INSTALL)"; set -x; $$install -e '.[dev]' -e tests/plugin_example
	@touch $@

venv-run: $(RUN_STAMP)

venv: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/exolegs dev

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check web worker tests bench
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/worker.py

# requirements.lock: the production dependencies (with the sql extra), pinned with
# hashes, for the Docker image and Heroku.
lock: $(RUN_STAMP)
	$(BIN)/python -m uv pip compile pyproject.toml --extra sql --generate-hashes --python-version 3.11 \
	  --universal --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
