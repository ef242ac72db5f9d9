# culm's developer commands. The README names these targets; .ci/run is what CI runs.

PYTHON ?= python3
LOCK_PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
PIP_INSTALL := $(BIN)/pip install -c $(CONSTRAINTS)

.DEFAULT_GOAL := help
.PHONY: help install dev test lint typecheck check lock openapi bench serve mutation

help:
	@echo "make install    venv at $(VENV) with culm[all] (pinned by $(CONSTRAINTS))"
	@echo "make dev        the same with culm[dev]: tests, ruff, mypy"
	@echo "make test       pytest -n 2 (PostgreSQL/Redis tests skip if unreachable, fail with CI=true)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy (strict)"
	@echo "make check      lint + typecheck + test"
	@echo "make lock       regenerate $(CONSTRAINTS) from pyproject.toml"
	@echo "make openapi    regenerate docs/openapi.json from the app"
	@echo "make bench      engine overhead benchmark"
	@echo "make mutation   mutmut over the core modules (slow: hours; docs/testing.md)"
	@echo "make serve      culm serve"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP_INSTALL) -e '.[all]'

dev: $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'

test:
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

check: lint typecheck test

# Resolve .[dev] (which includes every other extra) in a throwaway venv and pin what it got.
# Uses the machine's pip configuration (indexes) as it is.
lock:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(LOCK_PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q -e '.[dev]'; \
	{ \
	  echo "# Pinned versions of every dependency of culm[dev] (and so of [server], [distributed], [all])."; \
	  echo "# Regenerate with \`make lock\` (resolved on $$("$$tmp/venv/bin/python" -V)); do not edit by hand."; \
	  echo "# Use as a constraints file: pip install -c $(CONSTRAINTS) -e '.[dev]'"; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable; \
	} > $(CONSTRAINTS).new; \
	mv $(CONSTRAINTS).new $(CONSTRAINTS); \
	echo "wrote $(CONSTRAINTS)"

openapi:
	@$(BIN)/python -m culm.api.openapi > docs/openapi.json.new \
	  && mv docs/openapi.json.new docs/openapi.json || { rm -f docs/openapi.json.new; exit 1; }
	@echo "wrote docs/openapi.json"

bench:
	$(BIN)/python bench/engine_overhead.py

# Mutation testing of the core ([tool.mutmut] in pyproject.toml names the modules). Too slow for
# CI; MUTMUT_ARGS picks mutants, e.g. MUTMUT_ARGS='"culm.runtime.registry*"'. Results are kept
# in mutants/ (a later run only checks what changed); `mutmut browse` to triage.
mutation:
	nice -n 19 $(BIN)/mutmut run $(MUTMUT_ARGS)
	$(BIN)/mutmut results

serve:
	$(BIN)/culm serve
