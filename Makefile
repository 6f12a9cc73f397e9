# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PKI_DIR := var/pki
BROKER_DIR := var/broker
AFS := --af af1.example.com --af af2.example.com

.PHONY: help venv prereqs pki broker-up broker-down broker-status demo test test-unit test-integration lint bench soak clean

help:
	@echo "make demo    - set up (virtualenv, dev PKI, local TLS broker) and run the end-to-end demo"
	@echo "make test    - set up and run the whole test suite (unit, property, real TLS broker)"
	@echo "make lint    - ruff and mypy --strict"
	@echo "make bench   - benchmarks: secured vs plain, side by side (results in bench/results/)"
	@echo "make soak    - full-scale reliability and attack scenarios, one summary table"
	@echo "make broker-up / broker-down / broker-status - the local TLS broker for operators"

# The virtualenv is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s); install python3.11" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# RabbitMQ is the one system package the tests and the demo need; install it when missing.
prereqs:
	@bash infra/ensure_prereqs.sh

pki: venv
	$(PY) -m infra.pki --dir $(PKI_DIR) $(AFS)

broker-up: venv prereqs pki
	$(PY) -m infra.local_broker start --dir $(BROKER_DIR) --pki $(PKI_DIR) $(AFS)

broker-down: venv
	$(PY) -m infra.local_broker stop --dir $(BROKER_DIR)

broker-status: venv
	$(PY) -m infra.local_broker status --dir $(BROKER_DIR)

demo: venv prereqs
	$(PY) -m scripts.demo --pki $(PKI_DIR) --broker-dir $(BROKER_DIR) $(DEMO_ARGS)

test: venv prereqs
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit tests/property

test-integration: venv prereqs
	$(PY) -m pytest -q tests/integration

# Both are config-driven (pyproject.toml): ruff over every Python file in the tree, mypy over
# the packages listed under [tool.mypy].
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: venv prereqs
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.run

soak: venv prereqs
	$(PY) -m scripts.soak

clean:
	-$(PY) -m infra.local_broker stop --dir $(BROKER_DIR) 2>/dev/null
	rm -rf var .pytest_cache .mypy_cache .hypothesis
