"""Kafka, as bridge's engines see it: small ports (:mod:`~bridge.kafka.ports`) and bridge-owned
values (:mod:`~bridge.kafka.records`). :mod:`~bridge.kafka.confluent` implements the ports on
confluent-kafka (the only module importing it); :mod:`~bridge.kafka.memory` in memory, for tests."""

from bridge.kafka.ports import Admin, Consumer, KafkaClients, Producer, ProducerRole, RebalanceListener
from bridge.kafka.records import (
    BrokerInfo,
    ClusterInfo,
    DeliveryCallback,
    Headers,
    NewTopic,
    PartitionInfo,
    Record,
    TopicInfo,
    TopicPartition,
    header_value,
)

__all__ = [
    "Admin",
    "BrokerInfo",
    "ClusterInfo",
    "Consumer",
    "DeliveryCallback",
    "Headers",
    "KafkaClients",
    "NewTopic",
    "PartitionInfo",
    "Producer",
    "ProducerRole",
    "RebalanceListener",
    "Record",
    "TopicInfo",
    "TopicPartition",
    "header_value",
]
