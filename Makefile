# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The whole demo: the controller, then a proxy that follows it (config/edge.yaml, which also starts the
# demo upstreams). Ctrl-C stops both; if either exits, the other is stopped too.
run: $(BIN)/.installed
	@trap 'kill -TERM $$controller $$proxy 2>/dev/null; wait' INT TERM; \
	$(BIN)/turnout controller --config config/controller.yaml & controller=$$!; \
	for i in $$(seq 100); do [ -s config/controller.token ] && break; sleep 0.1; done; \
	$(BIN)/turnout proxy --config config/edge.yaml & proxy=$$!; \
	wait -n; kill -TERM $$controller $$proxy 2>/dev/null; wait

lint: $(BIN)/.installed
	$(BIN)/ruff check proxy controller tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
