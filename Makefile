# Two commands on a fresh machine:  `make run` (set up + serve)  and  `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml scripts/setup-system.sh | md5sum | cut -c1-12)
ONLY ?=
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-unit lint bench clean

GATEWAY_BUILD := src/agentcell/server/gateway/compiled.json

setup: $(STAMP) $(GATEWAY_BUILD)

$(STAMP): pyproject.toml scripts/setup-system.sh
	sh scripts/setup-system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,client,cli,dev]'
	rm -f $(VENV)/.installed-*; touch $@

# the gateway's hot modules, compiled by mypyc (skipped, with a note, where no C compiler is)
$(GATEWAY_BUILD): $(STAMP) scripts/compile_gateway.py $(wildcard src/agentcell/server/gateway/*.py)
	$(BIN)/python scripts/compile_gateway.py

run: setup
	$(BIN)/agentcell serve

test: setup lint
	$(BIN)/pytest -p no:cacheprovider --durations=25 tests

test-unit: setup
	$(BIN)/pytest -p no:cacheprovider tests/unit

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m bench $(ONLY)

clean:
	rm -rf $(VENV) build src/*.egg-info src/agentcell/server/gateway/*.so $(GATEWAY_BUILD)
