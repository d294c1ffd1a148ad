# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test unit lint down bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml devstack/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]' -e ./devstack
	touch $@

demo: install
	$(BIN)/pacs-bridge devstack up --owner demo
	$(BIN)/python -m pacs_devstack.demo_data --banner
	$(BIN)/python -m pacs_devstack.walkthrough

test: install
	$(BIN)/ruff check bridge devstack tests bench
	$(BIN)/lint-imports
	$(BIN)/pytest -rs tests --junitxml=var/test-reports/pacs-sso-bridge-$$($(BIN)/python -c \
	  'import importlib.metadata as m; print(m.version("pacs-sso-bridge"))').xml; \
	  rc=$$?; $(BIN)/pacs-bridge devstack down --owner test; exit $$rc

unit: install
	$(BIN)/pytest -rs tests/unit

lint: install
	$(BIN)/ruff check bridge devstack tests bench
	$(BIN)/lint-imports

down: install
	$(BIN)/pacs-bridge devstack down

clean: down
	rm -rf .devstack
