# Agentic Mesh — everything a fresh machine needs is installed from here (pip, apt-get, npm).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
NODE_STAMP := tests/node_modules/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help install system-deps node-deps gen lint release-contract test demo up bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

# scripts/pyinstall.sh installs with uv (pip when uv cannot be had). `dev` is everything the tests and lint
# need; the demo and `make up` need only the runtime and the local inference stack.
$(STAMP): pyproject.toml | $(PY)
	scripts/pyinstall.sh $(VENV) dev
	touch $(STAMP) $(DEMO_STAMP)

# A current dev install already holds everything the demo needs.
$(DEMO_STAMP): pyproject.toml | $(PY)
	@if [ $(STAMP) -nt pyproject.toml ]; then touch $(DEMO_STAMP); \
	else scripts/pyinstall.sh $(VENV) inference && touch $(DEMO_STAMP); fi

install: $(STAMP) ## create .venv and install the project with its dev and inference extras

system-deps: ## Debian packages the tests use: PostgreSQL server, docker-compose (config validation), Node.js, Chromium
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium chromium-driver"; \
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

lint: $(STAMP) ## ruff, mypy --strict, buf lint, buf breaking against the last released contract
	$(BIN)/ruff check .
	@# mypy --strict (pyproject.toml) over the agentmesh package, seen through its import names.
	scripts/typecheck_tree.sh
	$(BIN)/mypy
	$(BIN)/buf lint
	@# Released contracts are committed as buf images, so the check works in clones that carry no tags.
	@image=$$(ls protos/releases/v*.binpb 2>/dev/null | sort -V | tail -n 1); \
	test -n "$$image" || { echo "buf breaking: no released contract under protos/releases/"; exit 1; }; \
	echo "buf breaking against $$image"; $(BIN)/buf breaking --against "$$image"

release-contract: $(STAMP) ## freeze the contract for release VERSION (e.g. make release-contract VERSION=v0.2.0)
	@test -n "$(VERSION)" || { echo "usage: make release-contract VERSION=vX.Y.Z"; exit 2; }
	$(BIN)/buf build -o protos/releases/$(VERSION).binpb

test: $(STAMP) system-deps node-deps lint ## install what is needed and run the whole test suite
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: $(DEMO_STAMP) ## install what is needed, start the mesh locally, run a sample task, print its explanation
	$(BIN)/agentmesh up --demo

up: $(DEMO_STAMP) ## run the whole mesh locally until Ctrl-C
	$(BIN)/agentmesh up

bench: $(STAMP) system-deps ## run the benchmarks (figures go to bench/RESULTS.md)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove the local mesh state (.agentmesh) and caches
	rm -rf .agentmesh .pytest_cache .mypy_cache .ruff_cache
