# The two commands a newcomer needs:  make serve  and  make test.
# Both set everything up on first use (virtualenv, Python packages, the pinned esbuild).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup browser servers serve test lint lock lock-check screenshot bench bench-storm bench-fleet bench-flood bench-connections clean

setup: $(VENV)/.installed node_modules/.installed

# Exactly the lock's versions, checked against their hashes: the venv is made anew whenever
# the lock changes, so nothing left over from an older lock stays installed.
$(VENV)/.installed: requirements-dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

serve: setup
	$(BIN)/bundler serve --host $(HOST) --port $(PORT)

# The locks: every Python package, transitive ones included, pinned with its hashes.
# requirements.txt is the service's own (the Docker image), requirements-dev.txt adds
# the tests' and the tools'. `make lock` moves every pin to the newest release pyproject.toml
# allows; `make lock LOCK_UPGRADE="--upgrade-package redis"` moves one.
LOCK_UPGRADE ?= --upgrade
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock"
define compile_locks
$(BIN)/uv pip compile pyproject.toml --group dev $(LOCK_FLAGS) $(2) -o $(1)/requirements-dev.txt && \
	$(BIN)/uv pip compile pyproject.toml --group build $(LOCK_FLAGS) $(2) -o $(1)/requirements.txt
endef

lock: setup
	$(call compile_locks,.,$(LOCK_UPGRADE))

# The locks still say what pyproject.toml asks for: compiled again from the current pins
# (which uv keeps when they still fit), nothing may move.
lock-check: setup
	@tmp=$$(mktemp -d) && cp requirements.txt requirements-dev.txt $$tmp/ && \
	$(call compile_locks,$$tmp,) && \
	for f in requirements-dev requirements; do diff -u $$f.txt $$tmp/$$f.txt || \
	  { echo "!!! $$f.txt does not match pyproject.toml: run make lock" >&2; exit 1; }; done; \
	rm -rf $$tmp

lint: setup
	$(BIN)/ruff check bundler tests bench docs
	$(BIN)/ruff format --check bundler tests bench docs
	$(BIN)/mypy

# The browser tests drive Debian's Chromium; install it when missing and possible (root + apt).
# If it cannot be installed, those tests are skipped with a loud message; the rest still run.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "!!! chromium could not be installed: the browser tests will be SKIPPED !!!"

# The shared-tier tests run a real redis-server, the fleet benchmark HAProxy too, and the
# alert rules are checked by promtool (Debian's prometheus package); installed when missing
# and possible, else the tests needing them are skipped with a loud message.
servers:
	@command -v redis-server >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 && \
	  command -v promtool >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server haproxy prometheus; } || \
	  echo "!!! redis-server/haproxy/promtool could not be installed: the tests needing them will be SKIPPED !!!"

test: lock-check lint browser servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# docs/demo.png, the README's screenshot of the demo page
screenshot: setup browser
	$(BIN)/python docs/screenshot.py

bench: setup
	$(BIN)/python bench/bench_core.py

bench-storm: setup
	$(BIN)/python bench/bench_storm.py

bench-flood: setup
	$(BIN)/python bench/bench_flood.py

bench-connections: setup
	$(BIN)/python bench/bench_connections.py

bench-fleet: setup servers
	$(BIN)/python bench/bench_fleet.py

clean:
	rm -rf $(VENV) node_modules data .pytest_cache .mypy_cache .ruff_cache
