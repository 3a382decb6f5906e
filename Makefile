# Two commands on a fresh machine: `make demo` (end to end on the embedded defaults) and
# `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-fast test-ui test-deploy lint format dev clean audit

install: $(VENV)/.installed

# [dev] includes [standins] (simulator, moto server, fault proxy): demo, dev and test need them.
$(VENV)/.installed: setup.py ingest_pipeline/binance/_archive_rows.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/ingest-pipeline demo

# ruff, then the walls between layers (.importlinter: who may import dagster, the stand-ins
# apart, pure features) and the type checker over the core (mypy.ini).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The unit tier: offline, no sockets, no daemon; under a minute (tiers in ingest_pipeline_tests/tiers.py).
test-fast: install
	$(BIN)/pytest -m unit

# The browser test of the Dagster UI (needs Debian's chromium + chromium-driver; screenshots in
# test-artifacts/ui/) and the deployment tests (deploy/; a throwaway PostgreSQL cluster).
test-ui: install
	$(BIN)/pytest ingest_pipeline_tests/ui

test-deploy: install
	$(BIN)/pytest ingest_pipeline_tests/deploy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Dagster UI on http://127.0.0.1:3000 with the embedded moto server and the simulator.
dev: install
	bash scripts/dev.sh

clean:
	rm -rf $(VENV) .dagster_home *.egg-info

# Known vulnerabilities in the installed dependency set (PyPI's advisory data via pip-audit).
# Not part of `make test`: it needs the advisory service, which this workplace cannot reach.
audit: install
	$(BIN)/pip install --quiet pip-audit
	$(BIN)/pip freeze --exclude-editable > .venv/requirements.audit.txt
	$(BIN)/pip-audit --strict -r .venv/requirements.audit.txt
