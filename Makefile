# health-sidecar: `make test` installs everything the tests need, then runs every test.
# `make test-fast` runs the in-process tests only (under a minute).
# `make demo` runs the daemon beside local stand-ins for Convex and Mastra on loopback.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := caddy prometheus wrk

.PHONY: test test-fast lint typecheck vitest pytest demo deps packages debs docker-debs image clean

test: deps lint vitest pytest

# Everything the tests need; `packages` is what the demo and the in-process tests need (the
# Python package and the npm packages: no Debian package, no root).
deps: packages debs
packages: $(VENV)/.installed node_modules/.installed dev/mastra/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json dev/convex-local/package.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

dev/mastra/node_modules/.installed: dev/mastra/package.json dev/mastra/package-lock.json
	cd dev/mastra && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's caddy and prometheus (promtool) for the integration tests, installed when missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# tests/clients/docker builds and runs the image on a real engine: when none answers, Debian's
# docker.io (the test starts its dockerd, without a bridge) and mmdebstrap (a stand-in for
# python:3.11-slim when no registry answers): docs/deploy/docker.md, "Tested".
docker-debs:
	@if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then \
	  missing=""; for p in docker.io mmdebstrap; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi

# The image (BuildKit), its version label read from the package (sidecar/__init__.py).
image:
	DOCKER_BUILDKIT=1 docker build --build-arg VERSION="$$($(PYTHON) -c 'import sidecar; print(sidecar.__version__)')" -t health-sidecar .

# mypy --strict covers the harness and the benchmarks too: a benchmark is run by hand, so
# the type check is what notices when a change in sidecar/ or tests/support breaks one.
PY_SOURCES := sidecar tests bench dev/demo.py
lint: $(VENV)/.installed
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy --strict $(PY_SOURCES)

vitest: node_modules/.installed
	npm run --silent typecheck
	npx vitest run

# Two phases: the tests marked `serial` (they load the CPU or measure latency) run alone, after
# the rest ran on three workers (the suite mostly waits on timers; a file stays on one worker).
pytest: deps docker-debs
	$(BIN)/pytest -q -n 3 --dist loadfile -m "not serial"
	$(BIN)/pytest -q -m serial

# The modules in process, without the slow ones: under a minute (tests/README.md).
test-fast: packages
	$(BIN)/pytest -q tests/modules -m "not slow"

demo: packages
	$(BIN)/python dev/demo.py

clean:
	rm -rf $(VENV) node_modules dev/mastra/node_modules
