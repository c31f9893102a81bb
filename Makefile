# PixStream: `make run` to use it, `make test` to check it. Real logic lives in Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIX    := $(BIN)/pixstream
# The official AsyncAPI CLI, which a unit test runs on schemas/asyncapi.json (Node.js >= 20).
ASYNCAPI := deploy/asyncapi/node_modules/.bin/asyncapi

.DEFAULT_GOAL := help
.PHONY: help install browser up down run test lint fmt bench bench-ops corpus chaos fuzz

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PIX): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# --ignore-scripts: the CLI's postinstall would append to ~/.bashrc and a dependency's would
# send install analytics; `asyncapi validate` needs neither. --loglevel=error: the one warning
# is that @asyncapi/bundler, which `validate` does not use, asks for Node.js 24.
$(ASYNCAPI): deploy/asyncapi/package.json deploy/asyncapi/package-lock.json
	cd deploy/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's Chromium for the browser test (tests/e2e/test_browser.py), driven by Playwright for
# Python with executable_path: Playwright's own browser download is never used.
CHROMIUM := /usr/lib/chromium/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium (Debian: apt-get install chromium)"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

browser: $(CHROMIUM)  ## install Debian's Chromium for the browser test (as root)

install: $(PIX) $(ASYNCAPI) $(CHROMIUM)  ## create .venv with PixStream and its dev tools, the AsyncAPI CLI and Chromium

up: $(PIX)  ## start the local stack (Kafka, PostgreSQL, MinIO), apply topics and migrations
	$(PIX) stack up
	$(PIX) topics apply
	$(PIX) migrate

down: $(PIX)  ## stop the local stack (data stays in .pixstream/)
	$(PIX) stack down

run: up  ## set up if needed, then run ingress + workers (pixstream dev)
	$(PIX) dev

test: up $(ASYNCAPI) $(CHROMIUM)  ## run the whole test suite against the real services
	$(BIN)/pytest

lint: $(PIX)  ## ruff and mypy --strict
	$(BIN)/ruff check pixstream tests bench
	$(BIN)/ruff format --check pixstream tests bench
	$(BIN)/mypy

fmt: $(PIX)  ## format the code
	$(BIN)/ruff format pixstream tests bench
	$(BIN)/ruff check --fix pixstream tests bench

corpus: bench/corpus/MANIFEST.tsv  ## build the benchmark photo corpus
bench/corpus/MANIFEST.tsv:
	bash ../shared/bench/make_corpus.sh bench/corpus

bench-ops: $(PIX) corpus  ## time PixStream's operations against a plain Pillow loop
	$(BIN)/python -m bench.ops bench/corpus

FUZZ_SECONDS ?= 600
fuzz: $(PIX)  ## fuzz the decoders for FUZZ_SECONDS (crashers go to tests/data/fuzz)
	$(BIN)/python -m bench.fuzz --seconds $(FUZZ_SECONDS) --seed $$(date +%s)

BENCH_ARGS ?= --profile
SOAK_MINUTES ?= 10
bench: up corpus  ## PixStream through HTTP and Kafka against the codec limit in one run, then a memory soak (docs/benchmarks.md)
	$(BIN)/python -m bench.suite bench/corpus $(BENCH_ARGS)
	$(BIN)/python -m bench.soak bench/corpus --minutes $(SOAK_MINUTES)

MINUTES ?= 5
RUNS    ?= 5
chaos: up  ## the fault suite: RUNS runs of MINUTES minutes of faults (figures in docs/reliability.md)
	$(BIN)/pytest -m fault_run
	$(BIN)/python -m bench.chaos --minutes $(MINUTES) --runs $(RUNS)
