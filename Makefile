# Agentic Mesh — everything a fresh machine needs is installed from here (pip, apt-get, npm).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node_modules/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help install system-deps node-deps gen lint test demo up bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev and inference extras

system-deps: ## Debian packages the tests use: PostgreSQL server, docker-compose (config validation), Node.js
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(NODE_STAMP): tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-deps: $(NODE_STAMP) ## install the Node.js test client's packages (@grpc/grpc-js)

gen: $(STAMP) ## regenerate sdk/v1 stubs (+ .pyi) from protos/
	$(PY) protos/generate.py

lint: $(STAMP) ## ruff, mypy, buf lint, buf breaking against the last release tag
	$(BIN)/ruff check .
	$(BIN)/mypy sdk services agents
	$(BIN)/buf lint
	@tag=$$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null); \
	if [ -n "$$tag" ]; then echo "buf breaking against $$tag"; $(BIN)/buf breaking --against ".git#tag=$$tag"; \
	else echo "buf breaking: no release tag yet, nothing to compare against"; fi

test: $(STAMP) system-deps node-deps lint ## install what is needed and run the whole test suite
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: $(STAMP) ## install what is needed, start the mesh locally, run a sample task, print its explanation
	$(BIN)/agentmesh up --demo

up: $(STAMP) ## run the whole mesh locally until Ctrl-C
	$(BIN)/agentmesh up

bench: $(STAMP) system-deps ## run the benchmarks (figures go to bench/RESULTS.md)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove the local mesh state (.agentmesh) and caches
	rm -rf .agentmesh .pytest_cache .mypy_cache .ruff_cache
