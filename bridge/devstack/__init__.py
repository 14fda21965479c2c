"""Local services for tests, benchmarks and the dev stack: PostgreSQL, Apache Kafka (one node or a
cluster), Tansu.

Infrastructure only: nothing in the core of bridge depends on this package.
"""

from bridge.devstack.cluster import KafkaCluster
from bridge.devstack.kafka import KAFKA_VERSION, KafkaServer, ensure_jars
from bridge.devstack.postgres import PostgresServer, find_postgres_bin
from bridge.devstack.process import free_port
from bridge.devstack.tansu import TansuServer, find_tansu

__all__ = [
    "KAFKA_VERSION",
    "KafkaCluster",
    "KafkaServer",
    "PostgresServer",
    "TansuServer",
    "ensure_jars",
    "find_postgres_bin",
    "find_tansu",
    "free_port",
]
