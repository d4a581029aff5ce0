# `make run`: install into .venv (first time) and run the whole pipeline on the bundled samples (tiny profile).
# `make test`: install into .venv (first time), Debian's chromium if missing (`make browser`), and run the
#              test suite, offline.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install browser run test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/mumu pipeline

# Debian's chromium for the UI check in tests/test_deployments.py, installed only when none is on PATH.
# Without root it says what to run instead and carries on: the UI check then skips locally, fails in CI.
browser:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "browser: $$(command -v chromium)"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "browser: no chromium on PATH and not root, so not installing it; run" \
			"'sudo apt-get install -y chromium' (until then the UI check in tests/test_deployments.py is skipped)"; \
	elif ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); then \
		echo "browser: could not install Debian's chromium with apt-get (see above);" \
			"the UI check in tests/test_deployments.py is skipped locally and fails in CI"; \
	fi

# Two pytest-xdist workers, one torch thread each (the tiny profile's training steps take 2). Each shared trained
# model (tests/trained_models.py) is trained once, by the worker that takes its group of readers; tests/conftest.py
# orders the groups and slow tests first, and --no-loadscope-reorder keeps that order (xdist would otherwise sort
# groups by their number of tests). The 15 slowest tests and the suite's total close the log, so a change that slows
# the suite shows in its own CI run.
test: install browser
	$(PY) -m pytest -q --durations=15 -n 2 --dist loadgroup --no-loadscope-reorder
