# Enterprise CRM: one service per department, Kafka handoffs as versioned contracts.
#   make run     set up everything, start broker + mongod + all services + demo data
#   make test    set up everything, lint, type-check, run every test suite
#   make test-service S=sales   only what one department needs to release alone
#   make bench   handoff latency / throughput figures against a bare baseline
#   make chaos   fault suite under load (kills, broker and mongod restarts, a department down)
#   make stop    stop whatever `make run` started (services first, then broker and mongod)
#   make restart S=sales   restart one department of a running `make run`
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .local/tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export UV := $(CURDIR)/$(UV)

.PHONY: help setup run stop restart chaos test test-service lint typecheck unit bench schemas locks clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(UV):
	@echo "==> installing uv $(UV_VERSION) into $(TOOLS)"
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

setup: $(UV)
	@echo "==> syncing the workspace from uv.lock into $(VENV)"
	@$(UV) sync --frozen --quiet

run: setup
	@$(PY) scripts/run_platform.py

stop:
	@if [ -x $(PY) ]; then $(PY) scripts/run_platform.py --stop; fi

restart:
	@if [ -z "$(S)" ]; then echo "usage: make restart S=<leads|sales|service-desk|analytics|analytics-worker|gateway>"; exit 2; fi
	@$(PY) scripts/run_platform.py --restart "$(S)"

test: setup
	@bash scripts/test.sh

test-service: setup
	@if [ -z "$(S)" ]; then echo "usage: make test-service S=<leads|sales|service-desk|analytics|gateway>"; exit 2; fi
	@bash scripts/test_service.sh "$(S)"

locks: setup
	@$(PY) scripts/service_image.py locks

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: setup
	@$(VENV)/bin/mypy

# No broker, no database (CRM_TEST_NO_INFRA makes any test that asks for them fail), no
# external tool: the platform's and the contracts' unit tests and every service's tests/unit,
# in one pytest process (test file names are unique across the repo; one start-up instead of
# seven). The `tooling` checks (manifests, monitoring rules, docs, code habits, release gates,
# the dev supervisor), tests/e2e, tests/reliability and the API fuzzer run in `make test`; the
# fuzzer's property-testing libraries (hypothesis, schemathesis: seconds to import) are not even
# loaded here. `make test` also runs each service's suite alone, in its own directory and venv.
unit: setup
	@CRM_TEST_NO_INFRA=1 $(VENV)/bin/pytest -q -p no:cacheprovider -p no:hypothesispytest \
	  -p no:schemathesis -m "not integration and not e2e and not tooling" \
	  --ignore=tests/contract/test_openapi_fuzz.py shared tests/contract services/*/tests/unit

schemas: setup
	@$(PY) -m crm_contracts.schemas --write
	@$(PY) scripts/gen_asyncapi.py

bench: setup
	@$(PY) bench/run_bench.py

chaos: setup
	@$(PY) scripts/chaos.py

clean: stop
	rm -rf .local/run .local/test .local/bench .local/iso .local/chaos
