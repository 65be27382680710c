# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean servers image

# `make run` installs what Turnout needs to run; `make test` adds the test toolchain. The install compiles
# the hot path with mypyc (setup.py; pure Python where no C compiler exists) into extensions beside the
# sources, so it is redone whenever one of those sources changes (proxy/build.py lists them).
HOT_PATH := $(shell sed -n 's/^    "\([a-z]*\/.*\.py\)",$$/\1/p' proxy/build.py)
$(BIN)/.installed: pyproject.toml setup.py $(HOT_PATH)
	@echo "Installing Turnout into $(VENV) and compiling its hot path with mypyc (a minute or two)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

# The test toolchain with the project, in one install (one compile); it also stands for the plain one.
$(BIN)/.installed-test: pyproject.toml setup.py $(HOT_PATH)
	@echo "Installing Turnout and its test tools into $(VENV), compiling the hot path (about two minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(BIN)/.installed $@

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
	$(BIN)/ruff check setup.py turnout proxy controller tests benchmarks image
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

# The whole suite on the compiled build, then the hot path's tests on the pure one: a copy of the sources
# without the extensions (TURNOUT_EXPECT_BUILD makes tests/e2e/test_build.py check which build ran).
PURE := build/pure
HOT_TESTS := tests/e2e/test_build.py tests/unit/test_downstream.py tests/unit/test_head.py \
	tests/unit/test_routing.py tests/integration/test_forwarding.py tests/integration/test_proxy_split.py \
	tests/integration/test_malformed.py tests/integration/test_tls.py tests/integration/test_zero_drops.py \
	tests/integration/test_health.py tests/integration/test_lifecycle.py
test: lint servers
	TURNOUT_EXPECT_BUILD=compiled $(BIN)/pytest -q
	rm -rf $(PURE) && mkdir -p $(PURE) && cp -r pyproject.toml setup.py turnout proxy controller tests config $(PURE)/
	find $(PURE) \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
	cd $(PURE) && TURNOUT_EXPECT_BUILD=pure $(CURDIR)/$(BIN)/pytest -q -p no:cacheprovider $(HOT_TESTS)

# `make image`: Turnout's image, built with no registry (docs/docker.md), as the tests build it. The base
# is Debian ($(DEBIAN_SUITE)) with Python, made by debootstrap (from the Debian mirror, as root) and
# imported into the engine; the wheels are built here by .venv's Python, which must be the base's Python
# version (the check below says so before the build); docker build installs them with no index.
# DOCKER_HOST picks the engine, IMAGE the tag.
IMAGE ?= turnout
DEBIAN_SUITE ?= bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
BASE_IMAGE ?= turnout-base/debian-python:$(DEBIAN_SUITE)
DOCKER ?= docker
BASE_TAR := build/image/$(DEBIAN_SUITE).tar
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BASE_TAR):
	@command -v debootstrap >/dev/null || { echo "make image needs Debian's debootstrap (apt-get install debootstrap)"; exit 1; }
	@echo "Making the base image's root file system: Debian $(DEBIAN_SUITE) with Python (debootstrap, about a minute)"
	$(SUDO) rm -rf build/image/rootfs && mkdir -p build/image
	$(SUDO) debootstrap --variant=minbase --include=python3,python3-venv $(DEBIAN_SUITE) build/image/rootfs \
		$(DEBIAN_MIRROR) >build/image/debootstrap.log
	$(SUDO) rm -rf build/image/rootfs/var/cache/apt/archives/*.deb
	basename "$$(readlink -f build/image/rootfs/usr/bin/python3)" >$(BASE_TAR:.tar=.python)
	$(SUDO) tar --numeric-owner -C build/image/rootfs -cf $@.part . && mv $@.part $@
	$(SUDO) rm -rf build/image/rootfs

image: $(BASE_TAR) | $(BIN)/python
	@want=$$(cat $(BASE_TAR:.tar=.python)); have=$$($(BIN)/python -c 'import sys; print("python%d.%d" % sys.version_info[:2])'); \
	[ "$$want" = "$$have" ] || { echo "the wheels would be for $$have ($(BIN)/python), Debian $(DEBIAN_SUITE) has $$want:" \
	  "pick the suite with your Python (DEBIAN_SUITE=…) or recreate $(VENV) with that Python (PYTHON=…)"; exit 1; }
	$(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || $(DOCKER) import $(BASE_TAR) $(BASE_IMAGE)
	@echo "Building the wheels into wheels/ (Turnout's compiled by mypyc: about a minute)"
	rm -rf wheels && $(BIN)/pip wheel --quiet --disable-pip-version-check --wheel-dir wheels .
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg BUILD_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.so
	find turnout proxy -name '*.so' -delete
