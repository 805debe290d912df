# The README's two commands: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Each sets itself up: it creates .venv when missing and installs the pinned requirements once.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hpnb-installed

.PHONY: setup demo test lab clean-cache

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m hpnb demo

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout 300

test: $(STAMP)
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q $(NBVAL) notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-cache:
	rm -rf data/cache
