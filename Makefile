# The two commands a newcomer needs:  make serve  and  make test.
# Both set everything up on first use (virtualenv, Python packages, the pinned esbuild).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup browser servers serve test lint bench bench-storm bench-fleet clean

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

# The browser tests drive Debian's Chromium; install it when missing and possible (root + apt).
# If it cannot be installed, those tests are skipped with a loud message; the rest still run.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "!!! chromium could not be installed: the browser tests will be SKIPPED !!!"

# The shared-tier tests run a real redis-server, the fleet benchmark HAProxy too (Debian's);
# installed when missing and possible, else those tests are skipped with a loud message.
servers:
	@command -v redis-server >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server haproxy; } || \
	  echo "!!! redis-server/haproxy could not be installed: the shared-tier tests will be SKIPPED !!!"

test: lint browser servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/bench_core.py

bench-storm: setup
	$(BIN)/python bench/bench_storm.py

bench-fleet: setup servers
	$(BIN)/python bench/bench_fleet.py

clean:
	rm -rf $(VENV) node_modules data .pytest_cache .mypy_cache .ruff_cache
