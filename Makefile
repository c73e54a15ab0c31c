# The two commands: `make run` (serve, embedded PostgreSQL by default) and `make test` (all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test fuzz sdk bench bench-replica bench-pgbouncer clean

$(VENV)/.installed-local: requirements.txt requirements-local.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Node tools for the tests (Spectral, TypeScript), pinned by tools/package-lock.json.
tools/node_modules/.installed: tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

run: $(VENV)/.installed-local
	$(PY) scripts/run.py

test: $(VENV)/.installed-dev tools/node_modules/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The contract fuzzer for FUZZ_SECONDS (600) with a random seed (printed; CONTRACT_SEED=N repeats one).
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.installed-dev
	CONTRACT_SECONDS=$(FUZZ_SECONDS) CONTRACT_SEED=$${CONTRACT_SEED:-random} $(PY) -m pytest -s tests/test_contract.py

# Client SDKs from swagger/swagger.yaml into build/sdk/ (Python x2, TypeScript); see README.
sdk: $(VENV)/.installed-dev
	$(PY) scripts/sdk.py build/sdk

# Not part of the tests: about 4 minutes, loopback only, stops by itself. Results in bench/results/.
bench: $(VENV)/.installed-bench
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .data .pytest_cache build tools/node_modules

# The realistic mix (bench/k6/mix.js) with and without a streaming replica; about 2 minutes.
bench-replica: $(VENV)/.installed-bench
	$(PY) bench/replica.py

# 80 app connections into a PostgreSQL with 30 slots, through PgBouncer; about 2 minutes.
bench-pgbouncer: $(VENV)/.installed-bench
	$(PY) bench/pgbouncer.py
