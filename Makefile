# The two commands: `make run` (serve, embedded PostgreSQL by default) and `make test` (all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: help run dev mock test test-setup test-fast lint mutations deps-latest fuzz fuzz-http sdk bench bench-conditional bench-tracing bench-ratelimit bench-compare bench-stages bench-replica bench-pgbouncer bench-scale bench-identity clean
.DEFAULT_GOAL := help

# `make` alone lists the targets: each is the line starting with "## name:" above its rule.
help:
	@echo "Targets:"
	@grep -E '^## [a-z-]+:' $(MAKEFILE_LIST) | sed -E 's/^## ([a-z-]+): */  \1\t/' | expand -t 20

$(VENV)/.installed-local: requirements.txt requirements-local.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The manifests' validators (checkov, kubernetes-validate), in a venv of their own.
DEPLOY_VENV ?= .venv-deploy
$(DEPLOY_VENV)/.installed: requirements-deploy.txt
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r requirements-deploy.txt
	touch $@

# Node tools for the tests (Spectral, TypeScript), pinned by tools/package-lock.json.
tools/node_modules/.installed: tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

## run: set up and serve: venv, embedded PostgreSQL, schema, demo data, gunicorn on :8080
run: $(VENV)/.installed-local
	$(PY) scripts/run.py

## dev: as make run, and the workers restart when the code or the spec changes (make run RELOAD=1)
dev: export RELOAD = 1
dev: $(VENV)/.installed-local
	$(PY) scripts/run.py

## mock: the API from the spec's examples alone, no database (front-end work), on :8081
mock: $(VENV)/.installed-local
	$(PY) scripts/mock.py

# Every test, the modules spread over TEST_WORKERS processes (pytest-xdist, --dist loadfile: a module's
# tests stay in one worker, in order, sharing its module fixtures). Most of a test's time is waiting on a server, so three workers
# on two cores take under half the serial time (5 min 20 s on a fresh clone, setup included); four were
# no faster and loaded the machine past what the timing tests' margins allow. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 3
## test: set up and run every test against a real PostgreSQL, modules in parallel (under 6 minutes)
test: test-setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The venv then lint, the manifests' venv and the Node tools do not depend on one another: made side by
# side, a fresh clone's setup takes the longest of them (the manifests' venv) instead of their sum.
test-setup:
	@$(MAKE) --no-print-directory -j3 lint tools/node_modules/.installed $(DEPLOY_VENV)/.installed

## test-fast: the edit loop's tier: no process started, nothing slow or timed (under 90 s; make test runs all)
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m fast -p no:cacheprovider $(PYTEST_ARGS)

## lint: ruff (lint and format check), configured in pyproject.toml; part of make test
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Each proven guarantee broken in a scratch copy of the tree, one at a time (tests/mutations.py).
## mutations: break each guarantee in a scratch copy; fail if its test still passes (about 3 minutes)
mutations: $(VENV)/.installed-dev
	$(PY) tests/mutations.py

# The upgrade canary: the suite on the newest releases of the frameworks the patches rely on that the
# pins' major versions allow, in a scratch venv (.venv-latest); see scripts/deps_latest.py.
## deps-latest: the suite on the newest allowed Connexion, Flask, Starlette, uvicorn, gunicorn (scratch venv)
deps-latest: tools/node_modules/.installed $(DEPLOY_VENV)/.installed
	$(PYTHON) scripts/deps_latest.py $(PYTEST_ARGS)

# The contract fuzzer for FUZZ_SECONDS (600) with a random seed (printed; CONTRACT_SEED=N repeats one).
FUZZ_SECONDS ?= 600
## fuzz: the contract fuzzer for FUZZ_SECONDS (600) with a random seed
fuzz: $(VENV)/.installed-dev
	CONTRACT_SECONDS=$(FUZZ_SECONDS) CONTRACT_SEED=$${CONTRACT_SEED:-random} $(PY) -m pytest -s tests/project/test_contract.py

# Raw-socket HTTP fuzzing for HTTP_FUZZ_SECONDS (300) with a random seed (printed; HTTP_FUZZ_SEED=N repeats one).
HTTP_FUZZ_SECONDS ?= 300
## fuzz-http: raw-socket HTTP fuzzing (headers and framings permuted) for HTTP_FUZZ_SECONDS (300)
fuzz-http: $(VENV)/.installed-dev
	HTTP_FUZZ_SECONDS=$(HTTP_FUZZ_SECONDS) HTTP_FUZZ_SEED=$${HTTP_FUZZ_SEED:-random} $(PY) -m pytest -s -p no:cacheprovider --timeout 0 tests/pipeline/test_http_fuzz.py

# Client SDKs from swagger/swagger.yaml into build/sdk/ (Python x2, TypeScript); see README.
## sdk: generate the client SDKs into build/sdk/
sdk: $(VENV)/.installed-dev
	$(PY) scripts/sdk.py build/sdk

# Not part of the tests: about 10 minutes, loopback only, stops by itself. Results in bench/results/.
## bench: the benchmark: ours vs the peers, loopback only (about 10 minutes)
bench: $(VENV)/.installed-bench
	$(PY) bench/run.py
	$(PY) bench/identity.py

## bench-identity: CPU per check of each credential (configured token, API key, provider JWT), in process (seconds)
bench-identity: $(VENV)/.installed-bench
	$(PY) bench/identity.py

## bench-conditional: a 304 re-read against a 200 (worker CPU per request), loopback only (about a minute)
bench-conditional: $(VENV)/.installed-bench
	$(PY) bench/conditional.py

## bench-tracing: tracing off, on at 100 % and at 10 % sampling (worker CPU per request), loopback only (about two minutes)
bench-tracing: $(VENV)/.installed-bench
	$(PY) bench/tracing.py

## bench-ratelimit: no rate limit, one in memory, one in Redis (worker CPU per request), loopback only (about two minutes)
bench-ratelimit: $(VENV)/.installed-bench
	$(PY) bench/ratelimit.py

## bench-stages: where a request's worker CPU goes, µs per stage (py-spy on one worker), loopback only (about a minute)
bench-stages: $(VENV)/.installed-bench
	$(PY) bench/stages.py

# This tree against an earlier commit (REF), alternating on one database; about 2 minutes per pair.
REF ?= HEAD~1
## bench-compare: this tree against commit REF, alternating (BENCH_PAIRS=3 pairs, about 6 minutes)
bench-compare: $(VENV)/.installed-bench
	$(PY) bench/compare.py $(REF)

# Every endpoint at 10k customers / 50k orders and at 1M / 5M (BENCH_SCALE_SIZES), side by side.
## bench-scale: each endpoint at a small and a large store: median, p99, wrk, buffers (about 15 minutes)
bench-scale: $(VENV)/.installed-bench
	$(PY) bench/scale.py

## clean: remove the venvs, .data, build/ and tools/node_modules
clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .data .pytest_cache build tools/node_modules

# The realistic mix (bench/k6/mix.js) with and without a streaming replica; about 2 minutes.
## bench-replica: the k6 mix with and without a streaming replica (about 2 minutes)
bench-replica: $(VENV)/.installed-bench
	$(PY) bench/replica.py

# 80 app connections into a PostgreSQL with 30 slots, through PgBouncer; about 2 minutes.
## bench-pgbouncer: 80 app connections into 30 PostgreSQL slots through PgBouncer
bench-pgbouncer: $(VENV)/.installed-bench
	$(PY) bench/pgbouncer.py
