# exolegs: `make run` starts everything on embedded defaults, `make test` runs the suite.
# `make run` installs only what running needs (the package and its embedded Redis);
# `make test` adds the test and lint tools. Each has its own stamp, redone when
# pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench venv venv-run lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[embedded]'
	@touch $@

$(TEST_STAMP): pyproject.toml tests/plugin_example/pyproject.toml $(RUN_STAMP)
	$(PIP) -e '.[dev]' -e tests/plugin_example
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
# hashes, for the Docker image and Heroku. Needs uv, from PyPI: `pip install uv`.
lock:
	uv pip compile pyproject.toml --extra sql --generate-hashes --python-version 3.11 \
	  --universal --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
