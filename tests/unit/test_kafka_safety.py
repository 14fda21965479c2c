"""The safety settings of every Kafka client bridge builds hold whatever the configuration says:
BRIDGE_KAFKA__OPTIONS passes any librdkafka setting through, except these."""

from __future__ import annotations

import json

import pytest

from bridge.config import load_settings
from bridge.kafka.confluent import ConfluentClients

HOSTILE = {
    "enable.idempotence": "false",
    "acks": "1",
    "partitioner": "consistent_random",
    "message.timeout.ms": "1000",
    "enable.auto.offset.store": "true",
    "linger.ms": "7",  # not a safety setting: passed through
}


@pytest.fixture
def clients(monkeypatch) -> ConfluentClients:
    monkeypatch.setenv("BRIDGE_KAFKA__OPTIONS", json.dumps(HOSTILE))
    settings = load_settings()
    assert settings.kafka.options == HOSTILE  # the settings do carry the hostile values
    return ConfluentClients(settings)


def test_the_relay_producer_keeps_its_safety_settings(clients):
    config = clients.producer_config("relay", client_id="relay")
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"
    assert config["message.timeout.ms"] == 0
    assert config["linger.ms"] == "7"


@pytest.mark.parametrize("role", ["dlq", "replay"])
def test_dlq_and_replay_producers_keep_theirs(clients, role):
    config = clients.producer_config(role, client_id=role)
    assert (config["enable.idempotence"], config["acks"], config["partitioner"]) == (True, "all", "murmur2_random")


def test_consumers_never_store_offsets_on_their_own(clients):
    for background in (True, False):
        config = clients.consumer_config("g", client_id="c", commit_in_background=background)
        assert config["enable.auto.offset.store"] is False
        assert config["enable.auto.commit"] is background
        assert config["group.id"] == "g"
