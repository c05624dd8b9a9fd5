# The two commands a newcomer needs:  make serve  and  make test.
# Both set everything up on first use (virtualenv, Python packages, the pinned esbuild).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup serve test lint bench bench-storm clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

serve: setup
	$(BIN)/bundler serve --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check bundler tests bench
	$(BIN)/ruff format --check bundler tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/bench_core.py

bench-storm: setup
	$(BIN)/python bench/bench_storm.py

clean:
	rm -rf $(VENV) node_modules data .pytest_cache .mypy_cache .ruff_cache
