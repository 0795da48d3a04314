# Two entry points, each creating its own virtual environment on a fresh machine:
#   make demo   runs the main job end to end on the bundled corpus
#   make test   runs the test suite (tiny configs, no network)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-spanbert-tf

.PHONY: demo test test-slow venv bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/spanbert-tf demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -rs --durations=15 tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q -rs tests
