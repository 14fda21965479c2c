"""Shared test configuration. Service fixtures live in ``fixtures/``, one module per service."""

pytest_plugins = [
    "fixtures.names",
    "fixtures.postgres",
    "fixtures.kafka",
    "fixtures.cluster",
    "fixtures.outbox",
    "fixtures.schema_registry",
]
