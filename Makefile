# Two commands on a fresh machine: `make run` (set up, start the service) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test evaluate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/cds-service serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest

# Example: make evaluate REQUEST=fhir_examples/cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json
evaluate: $(VENV)/.installed
	$(VENV)/bin/cds-service evaluate $(REQUEST)

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
