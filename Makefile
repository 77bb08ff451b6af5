# jetqueue: every target that needs Python creates .venv first, so a fresh clone just works.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
QUEUES ?= queues.yaml
OUT    ?= out
PYTEST_ARGS ?=
# make test runs on this many pytest-xdist processes (tests wait on servers far more than they compute); the `slow`
# tests share one of them (tests/conftest.py), so no two clusters or chaos scenarios run at once. 0 = in-process.
TEST_WORKERS ?= 2
DEMO_ARGS ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1)
IMAGE  ?= jetqueue:$(VERSION)
DOCKER ?= docker

.DEFAULT_GOAL := help
.PHONY: help setup render install test lint image docs bench demo chaos kind-test clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/dev.txt requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with the pinned dependencies (idempotent)

render: $(STAMP) ## validate $(QUEUES) and render Helm values into $(OUT)/
	$(BIN)/jetqueue render -f $(QUEUES) -o $(OUT)

install: render ## helm upgrade --install NATS, the workers and the gateway, in order
	$(BIN)/jetqueue install --plan $(OUT)/install-plan.json

test: $(STAMP) ## run the whole test suite (real nats-server, real Helm engine; TEST_WORKERS=2 processes)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, mypy and hadolint (worker/Dockerfile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --failure-threshold style worker/Dockerfile
	rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/jetqueue
	ln -s $(CURDIR)/worker/* $(VENV)/typecheck/jetqueue/ && ln -s $(CURDIR)/generator $(VENV)/typecheck/jetqueue/generator
	$(BIN)/mypy

image: ## build the runtime image from worker/Dockerfile (IMAGE=jetqueue:<version>; needs a Docker engine)
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make image: no Docker engine found ($(DOCKER) is not on PATH); install Docker, or build worker/Dockerfile with another engine" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make image: no Docker engine found ($(DOCKER) info failed: is the daemon running and reachable?)" >&2; exit 1; }
	$(DOCKER) build -f worker/Dockerfile -t $(IMAGE) .

docs: $(STAMP) ## regenerate the reference pages and chart READMEs, then build the site strictly into site/
	$(BIN)/jetqueue docs --write
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean: ## remove .venv, out/, site/ and caches
	rm -rf $(VENV) $(OUT) site .pytest_cache .mypy_cache .ruff_cache .hypothesis

demo: $(STAMP) ## the whole system locally: embedded NATS, gateway, workers, sample functions, a burst of calls
	$(BIN)/jetqueue dev $(DEMO_ARGS)

chaos: $(STAMP) ## the chaos suite three times in a row, printing each ledger (multi-host scenarios need root)
	for i in 1 2 3; do CHAOS_FULL=1 $(BIN)/python -m pytest tests/chaos -q -s $(PYTEST_ARGS) || exit 1; done

kind-test: $(STAMP) ## the kind suite (needs Docker, kind, helm and kubectl; skips otherwise)
	$(BIN)/python -m pytest tests/kind -m kind -rs $(PYTEST_ARGS)

bench: $(STAMP) ## every figure beside its baseline, one run; bench/results.md (BENCH_ARGS="--quick": smoke run)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
