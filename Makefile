# The two commands: `make run` (serve, embedded PostgreSQL by default) and `make test` (all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test bench clean

$(VENV)/.installed-local: requirements.txt requirements-local.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

run: $(VENV)/.installed-local
	$(PY) scripts/run.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# Not part of the tests: about 4 minutes, loopback only, stops by itself. Results in bench/results/.
bench: $(VENV)/.installed-bench
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .data .pytest_cache
