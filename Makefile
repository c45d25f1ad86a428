# Entry points for developers and CI; make is the only prerequisite, bootstrap installs the rest.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

BIN := .venv/bin
# mypy fails on a folder without Python files, and some packages are not written yet.
PY_DIRS := $(foreach d,collector devices pipelines dashboards deploy tests bench,\
	$(if $(shell find $(d) -name '*.py' -print -quit 2>/dev/null),$(d)))
ARGS ?=
PYTEST_ARGS ?=

.PHONY: bootstrap stack test lint bench clean distclean

bootstrap:
	bash deploy/bootstrap.sh

stack: bootstrap
	$(BIN)/ecotel-stack $(ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy $(PY_DIRS)

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: bootstrap
	@if [[ -f bench/__main__.py ]]; then \
		$(BIN)/python -m bench $(ARGS); \
	else \
		echo "bench: no bench/__main__.py yet, skipping"; \
	fi

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .venv
