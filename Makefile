# Two commands on a fresh machine: `make run` (set up, start the service) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test evaluate clean postgres-server chromium
.PHONY: soak fuzz bench wrk

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/cds-service serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed postgres-server chromium
	$(PY) -m pytest

# The decision-store tests run against SQLite and a real PostgreSQL server: they start a private
# cluster (initdb in a temp folder, 127.0.0.1, a free port) from the server binaries of Debian's
# postgresql package, installed here with apt-get when missing (root, as in CI). Without them the
# PostgreSQL tests skip with the reason (and fail under CI).
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing PostgreSQL (Debian package postgresql) for the decision-store tests"; \
	  ( export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends postgresql ) >/tmp/cds-postgres-install.log 2>&1 || \
	  echo "PostgreSQL could not be installed (log: /tmp/cds-postgres-install.log): its tests will skip"; \
	else echo "PostgreSQL server not installed (as root: apt-get install postgresql): its tests will skip"; fi

# The console's browser tests drive Debian's Chromium (/usr/bin/chromium) with Playwright; it is
# installed here with apt-get when missing (root, as in CI). No tool ever downloads a browser of its
# own (never `playwright install`). Without it the browser tests skip with the reason (and fail under CI).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Chromium (Debian package chromium) for the console's browser tests"; \
	  ( export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends chromium ) >/tmp/cds-chromium-install.log 2>&1 || \
	  echo "Chromium could not be installed (log: /tmp/cds-chromium-install.log): the browser tests will skip"; \
	else echo "Chromium not installed (as root: apt-get install chromium): the browser tests will skip"; fi

# Reliability runs against the production server (results in bench/RESULTS.md): a soak of SOAK_SECONDS
# at SOAK_RATE requests/s while its FHIR server injects delays, errors and resets (tests/test_soak.py
# runs 30 s of it), and Schemathesis with FUZZ_EXAMPLES positive + negative requests per operation
# (tests/test_openapi.py runs 25 in-process). Both print what they tried and exit 1 on failure.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 10
FUZZ_EXAMPLES ?= 200

soak: $(VENV)/.installed
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE)

fuzz: $(VENV)/.installed
	$(PY) bench/fuzz.py --examples $(FUZZ_EXAMPLES)

# Example: make evaluate REQUEST=fhir_examples/cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json
evaluate: $(VENV)/.installed
	$(VENV)/bin/cds-service evaluate $(REQUEST)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info

# Performance (issue 8; results in bench/RESULTS.md): the engine alone per policy and per request stage,
# then HTTP order-sign under the production server against a no-op endpoint, growth and memory. The
# load generator is wrk (Debian package), installed here with apt-get when missing (root, as in CI).
BENCH_SECONDS ?= 10

bench: $(VENV)/.installed wrk
	$(PY) bench/engine_bench.py
	$(PY) bench/http_bench.py --seconds $(BENCH_SECONDS)

wrk:
	@if command -v wrk >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing wrk (Debian package wrk) for the HTTP benchmark"; \
	  ( export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends wrk ) >/tmp/cds-wrk-install.log 2>&1 || \
	  { echo "wrk could not be installed (log: /tmp/cds-wrk-install.log)"; exit 1; }; \
	else echo "wrk is not installed (as root: apt-get install wrk)"; exit 1; fi
