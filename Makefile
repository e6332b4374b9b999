# The serverless deploy orchestrator. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
# command-or-file:package; instances run under bubblewrap, with pasta (passt) for their own
# network and the container runtimes' default seccomp profile (golang-github-containers-common);
# chromium and its WebDriver for the console's browser tests (tests/e2e/test_console.py).
DEBIAN_PACKAGES := docker-registry:docker-registry bwrap:bubblewrap pasta:passt \
	/usr/share/containers/seccomp.json:golang-github-containers-common \
	chromium:chromium chromedriver:chromium-driver node:nodejs npm:npm
# The Node.js examples' runtime (nodejs22): localcloud runs it with a host node of that major
# version (`node22` or `node` on PATH); Debian's may be older, so `make deps` adds one from the
# npm registry's node-linux-* package when the machine has none.
NODE_MAJOR := 22
PYTEST_ARGS ?=

.PHONY: help deps venv up down status demo test test-fast bench lint fmt clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

deps: ## Install the Debian packages localcloud runs (registry, bubblewrap, passt, seccomp profile), chromium for the console's tests, and Node.js 22
	@missing=""; for pair in $(DEBIAN_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$${cmd#/}" != "$$cmd" ]; then test -e $$cmd || missing="$$missing $$pkg"; \
	  else command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "error: missing Debian packages:$$missing. Install them as root: apt-get install$$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	  || { echo "error: could not install$$missing with apt-get; install them by hand" >&2; exit 1; }; \
	fi
	@if command -v npm >/dev/null 2>&1 && ! command -v node$(NODE_MAJOR) >/dev/null 2>&1 \
	    && ! node --version 2>/dev/null | grep -q '^v$(NODE_MAJOR)\.'; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "note: no Node.js $(NODE_MAJOR) (node$(NODE_MAJOR)); its tests will skip" >&2; exit 0; fi; \
	  arch=$$(uname -m | sed 's/x86_64/x64/; s/aarch64/arm64/'); dir=/usr/local/lib/node$(NODE_MAJOR); \
	  echo "installing Node.js $(NODE_MAJOR) as node$(NODE_MAJOR) (npm registry: node-linux-$$arch)"; \
	  $$SUDO npm install --silent --no-fund --no-audit --prefix $$dir node-linux-$$arch@$(NODE_MAJOR) \
	  && $$SUDO ln -sf $$dir/node_modules/node-linux-$$arch/bin/node /usr/local/bin/node$(NODE_MAJOR) \
	  || echo "note: could not install Node.js $(NODE_MAJOR); its tests will skip" >&2; \
	fi

$(STAMP):
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (set PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $(PYTHON) is older than 3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP) ## Create the virtualenv and install the pinned requirements

up: venv deps ## Start localcloud in the background (orch local up)
	$(BIN)/orch local up

down: venv ## Stop localcloud (orch local down)
	$(BIN)/orch local down

status: venv ## Show localcloud's health and addresses
	$(BIN)/orch local status

demo: venv deps ## Start localcloud, provision the pipeline, deploy examples/hello from a zip and call it
	$(BIN)/orch local up
	eval "$$($(BIN)/orch local env)" && $(BIN)/orch deploy examples/hello && $(BIN)/orch call hello --path /?name=demo

test: venv deps ## Run the whole test suite (starts its own localcloud on free ports)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv deps ## Run the tests except the slow restart/kill cases
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: venv deps ## Run the benchmarks (figures as ratios against references measured in the same run)
	$(BIN)/python -m benchmarks

lint: venv ## ruff check, ruff format --check and mypy (types of pipeline/, orch/ and localcloud/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove the venv and local state
	rm -rf $(VENV) .localcloud .pytest_cache .ruff_cache
