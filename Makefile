# Leadstream: `make run` and `make test` do everything on a fresh clone.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
# Each service, worker and CLI run is a new Python process: with PYTHONDONTWRITEBYTECODE set (as
# on our CI machines) every one of them compiled ~2,300 modules from source, 5 s of CPU each.
# The locked dependencies are compiled once at install; our own modules cache as they are used.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: browser install run test test-fast lint bench soak demo migrate lock clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"

$(VENV)/.installed: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --inexact --quiet --compile-bytecode
	touch $@

install: $(VENV)/.installed

lock: $(UV)
	$(UV) lock

migrate: install
	$(VENV)/bin/leadstream migrate

# development defaults: plain http on localhost, so the dashboard's cookie cannot be Secure; a
# public privacy secret (shared/privacy.py DEVELOPMENT_SECRET), unsafe in production
run: install
	LEADSTREAM_DASHBOARD_SECURE_COOKIE=$${LEADSTREAM_DASHBOARD_SECURE_COOKIE:-false} \
	LEADSTREAM_PRIVACY_SECRET=$${LEADSTREAM_PRIVACY_SECRET:-development-only-privacy-secret-unsafe-in-production} \
	$(VENV)/bin/leadstream run

# Debian's Chromium for the dashboard's browser tests (skipped, not failed, if it cannot be installed)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || echo "chromium not installed: browser tests will be skipped"

# The suite mostly waits (brokers, processes, timeouts), so it runs on PYTEST_WORKERS processes;
# PYTEST_WORKERS=0 runs it serially in one process, for debugging. Tests marked with one
# xdist_group share a costly module fixture (a seeded stack) and run on one worker, in order.
PYTEST_WORKERS ?= 4

test: install browser
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# ruff's rules and line length are in pyproject.toml; the tree keeps its own layout (no ruff format)
lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(VENV)/bin/python -m pytest -q -x tests/unit $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/leadstream demo $(DEMO_ARGS)

bench: install
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

# not in CI: 100,000 events with >= 20 faults at random moments (10-20 min); SOAK_ARGS="--backend postgres"
soak: install
	$(VENV)/bin/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
