# Quick start: `make demo` (set up + run the main job), `make test` (the tests CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint typecheck proto bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/gearkv demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

proto: setup
	$(PY) scripts/gen_proto.py

test: setup
	$(PY) scripts/gen_proto.py --check
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
