# Two set-up commands: `make demo` and `make test`. Both create or reuse the virtual environment
# (with the test and plot extras: pytest, onnx, matplotlib).
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
	$(PY) -m pip install --quiet -e ".[test,plot,dali]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	test -d $(DEMO_DATA)/train || $(PY) scripts/make_demo_data.py --out $(DEMO_DATA)
	$(PY) train.py -c configs/demo.yaml --data-dir $(DEMO_DATA) --output $(DEMO_RUN)
	$(PY) validate.py -c $(DEMO_RUN)/config.yaml --checkpoint $(DEMO_RUN)/best.pth --data-dir $(DEMO_DATA)

clean-venv:
	rm -rf $(VENV)
