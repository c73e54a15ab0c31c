# The two commands: `make run` (serve, embedded PostgreSQL by default) and `make test` (all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test venv clean

$(VENV)/.installed-local: requirements.txt requirements-local.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed-local
	$(PY) scripts/run.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache
