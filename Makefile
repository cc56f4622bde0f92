# health-sidecar: `make test` installs everything the tests need, then runs every test.
# `make demo` runs the daemon beside local stand-ins for Convex and Mastra on loopback.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := caddy prometheus wrk

.PHONY: test lint typecheck vitest pytest demo deps debs clean

test: deps lint vitest pytest

deps: $(VENV)/.installed node_modules/.installed dev/mastra/node_modules/.installed debs

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

lint: $(VENV)/.installed
	$(BIN)/ruff check sidecar tests bench dev/demo.py
	$(BIN)/ruff format --check sidecar tests bench dev/demo.py
	$(BIN)/mypy --strict sidecar

vitest: node_modules/.installed
	npm run --silent typecheck
	npx vitest run

pytest: deps
	$(BIN)/pytest -q

demo: deps
	$(BIN)/python dev/demo.py

clean:
	rm -rf $(VENV) node_modules dev/mastra/node_modules
