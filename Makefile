# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean servers

# `make run` installs what Turnout needs to run; `make test` adds the test toolchain.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The whole demo: the controller, then a proxy that follows it (config/edge.yaml, which also starts the
# demo upstreams), and a small load of sticky users (50 requests a second, for at most an hour) so that
# rollout analysis has requests to judge. Ctrl-C stops everything; if one exits, the others stop too.
run: $(BIN)/.installed
	@trap 'kill -TERM $$controller $$proxy $$load 2>/dev/null; wait' INT TERM; \
	$(BIN)/turnout controller --config config/controller.yaml & controller=$$!; \
	for i in $$(seq 100); do [ -s config/controller.token ] && break; sleep 0.1; done; \
	$(BIN)/turnout proxy --config config/edge.yaml & proxy=$$!; \
	$(BIN)/python -m proxy.demo --load http://127.0.0.1:8080/ 3600 & load=$$!; \
	wait -n $$controller $$proxy; kill -TERM $$controller $$proxy $$load 2>/dev/null; wait

lint: $(BIN)/.installed-test
	$(BIN)/ruff check proxy controller tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The tests use real servers: Debian's Prometheus (rollout analysis) and Docker engine with a static
# busybox (discovery and deploys; the tests start their own dockerd), debootstrap for the image's base
# (built offline) and docker-compose (the sidecar setup). Installed if missing; the package's init script is kept from starting a daemon
# of its own (policy-rc.d), as in a container build.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -qq -y --no-install-recommends
servers:
	@missing=""; command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	dpkg -s busybox-static >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then echo "installing Debian's$$missing (for the tests)"; \
	  guard=""; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	    $(SUDO) chmod +x /usr/sbin/policy-rc.d; guard=1; }; \
	  $(APT) install $$missing >/dev/null 2>&1 || { $(APT) update && $(APT) install $$missing >/dev/null; }; \
	  [ -z "$$guard" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; fi

test: lint servers
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
