# Two set-up commands: `make demo` and `make test`. Both create or reuse the virtual environment with
# the project installed in it, editable, with its commands (t2t-train, ...) and the test, plot and
# dali extras (pytest, onnx, mkdocs, matplotlib, DALI).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.t2t-installed
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=
# pytest-xdist workers: most integration tests wait on a subprocess's start-up for part of their time,
# so two workers keep a 2-core machine busy (each takes its share of the cores; see tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: install test test-fast demo clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes t2t 2>/dev/null || true  # this project's distribution name until 0.1.0
	$(PY) -m pip install --quiet -e ".[test,plot,dali]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	test -d $(DEMO_DATA)/train || $(PY) -m t2t.tools.demo_data --out $(DEMO_DATA)
	$(VENV)/bin/t2t-train -c demo --data-dir $(DEMO_DATA) --output $(DEMO_RUN)
	$(VENV)/bin/t2t-validate -c $(DEMO_RUN)/config.yaml --checkpoint $(DEMO_RUN)/best.pth --data-dir $(DEMO_DATA)

clean-venv:
	rm -rf $(VENV)
