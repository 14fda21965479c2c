#!/usr/bin/env bash
# Make sure this machine can run the test services: PostgreSQL server binaries (initdb/pg_ctl), a
# JDK and Maven for Apache Kafka and Apicurio Registry, and their release artifacts (fetched once into
# ~/.cache/bridge).
# Installs missing Debian packages when running as root; otherwise says what is missing.
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
missing=()

have_pg() {
  command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
}

if [[ -z "${BRIDGE_TEST_DATABASE_URL:-}" ]] && ! have_pg; then missing+=(postgresql); fi
local_kafka() { [[ -z "${BRIDGE_TEST_KAFKA_BOOTSTRAP:-}" && "${BRIDGE_TEST_BROKER:-kafka}" == "kafka" ]]; }
local_registry() { [[ -z "${BRIDGE_TEST_SCHEMA_REGISTRY_URL:-}" && "${BRIDGE_TEST_SCHEMA_REGISTRY:-1}" != "0" ]]; }
if local_kafka || local_registry; then
  command -v java >/dev/null 2>&1 || missing+=(default-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
fi

if (( ${#missing[@]} )); then
  if [[ "$(id -u)" == "0" ]]; then
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]} (install them, or point the tests at your services: see README)" >&2
    exit 1
  fi
fi

# PostgreSQL refuses to run as root: the fixtures run it as an unprivileged user (default postgres).
pg_user="${BRIDGE_PG_USER:-postgres}"
if [[ -z "${BRIDGE_TEST_DATABASE_URL:-}" && "$(id -u)" == "0" ]] && ! id "$pg_user" >/dev/null 2>&1; then
  echo "==> creating system user $pg_user to run the throwaway PostgreSQL clusters"
  useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
fi

if [[ -z "${BRIDGE_TEST_KAFKA_BOOTSTRAP:-}" && "${BRIDGE_TEST_BROKER:-kafka}" == "kafka" ]]; then
  echo "==> Apache Kafka jars: $("$PYTHON" -c "from bridge.devstack.kafka import ensure_jars; print(ensure_jars())")"
fi

# Apicurio Registry (a Confluent-compatible Schema Registry on Java 17) for the Schema Registry tests,
# fetched once into ~/.cache/bridge like the Kafka jars. BRIDGE_TEST_SCHEMA_REGISTRY=0 skips those tests.
if local_registry; then
  echo "==> Apicurio Registry: $(PYTHONPATH=tests "$PYTHON" -m fixtures.schema_registry fetch)"
fi
