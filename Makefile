# `make run`: install into .venv (first time) and run the whole pipeline on the bundled samples (tiny profile).
# `make test`: install into .venv (first time) and run the test suite, offline.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install run test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/mumu pipeline

test: install
	$(PY) -m pytest -q --durations=15

bench: install
	$(PY) bench/run_all.py
