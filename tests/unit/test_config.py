from __future__ import annotations

import pytest

from bridge.config import BridgeSettings, load_settings
from bridge.errors import ConfigurationError


def test_defaults():
    settings = BridgeSettings()
    assert settings.topic_prefix is None  # then the contracts' own (contracts.toml: sguild.)
    assert settings.database.schema_name == "bridge"
    assert settings.kafka.client_config() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_environment_with_nested_delimiter(monkeypatch):
    monkeypatch.setenv("BRIDGE_DATABASE__URL", "postgresql://relay:hunter2@db:5432/revenue")
    monkeypatch.setenv("BRIDGE_DATABASE__SCHEMA_NAME", "outbox_rev")
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("BRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_USERNAME", "relay")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("BRIDGE_KAFKA__OPTIONS", '{"linger.ms": "5", "ssl.endpoint.identification.algorithm": "https"}')
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", "prod.")
    settings = load_settings()
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value().endswith("@db:5432/revenue")
    assert settings.database.schema_name == "outbox_rev"
    assert settings.topic_prefix == "prod."
    assert settings.kafka.client_config() == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "relay",
        "sasl.password": "s3cret",
        "linger.ms": "5",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_secrets_never_appear_in_repr_or_str(monkeypatch):
    monkeypatch.setenv("BRIDGE_DATABASE__URL", "postgresql://relay:hunter2@db/revenue")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("BRIDGE_KAFKA__SECRET_OPTIONS", '{"sasl.oauthbearer.client.secret": "oauth-s3cret"}')
    settings = load_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text
        assert "s3cret" not in text
    assert settings.kafka.client_config()["sasl.oauthbearer.client.secret"] == "oauth-s3cret"


def test_secret_looking_pass_through_options_are_refused(monkeypatch):
    monkeypatch.setenv("BRIDGE_KAFKA__OPTIONS", '{"sasl.password": "oops"}')
    with pytest.raises(ConfigurationError, match=r"sasl\.password look like secrets") as info:
        load_settings()
    assert "oops" not in str(info.value)


@pytest.mark.parametrize("name", ["Bridge", "br-idge", "1bridge", 'x"; DROP SCHEMA public; --', "a" * 64, ""])
def test_hostile_or_odd_schema_names_are_refused(monkeypatch, name):
    monkeypatch.setenv("BRIDGE_DATABASE__SCHEMA_NAME", name)
    with pytest.raises(ConfigurationError, match="BRIDGE_DATABASE__SCHEMA_NAME"):
        load_settings()


def test_topic_prefix_must_be_legal(monkeypatch):
    monkeypatch.setenv("BRIDGE_TOPIC_PREFIX", "bad prefix/")
    with pytest.raises(ConfigurationError, match="BRIDGE_TOPIC_PREFIX"):
        load_settings()


def test_json_log_lines():
    import json
    import logging

    from bridge.observability import JsonFormatter

    record = logging.LogRecord("bridge.relay", logging.WARNING, __file__, 1, "relay: %s", ("lost lock",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING"
    assert line["logger"] == "bridge.relay"
    assert line["message"] == "relay: lost lock"
    assert line["time"].endswith("Z")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        (
            {"BRIDGE_CONSUMER__BACKOFF_INITIAL": "60", "BRIDGE_CONSUMER__BACKOFF_MAX": "5"},
            "BRIDGE_CONSUMER__BACKOFF_INITIAL",
        ),
        (
            {"BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS": "5000", "BRIDGE_CONSUMER__SESSION_TIMEOUT_MS": "6000"},
            "BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS",
        ),
        ({"BRIDGE_RELAY__BUSY_INTERVAL": "1", "BRIDGE_RELAY__IDLE_INTERVAL": "0.1"}, "BRIDGE_RELAY__BUSY_INTERVAL"),
        ({"BRIDGE_RELAY__BATCH_SIZE": "lots"}, "BRIDGE_RELAY__BATCH_SIZE"),
        ({"BRIDGE_RELAY__BATCHSIZE": "5"}, "BRIDGE_RELAY__BATCHSIZE"),  # a typo is not silently ignored
        ({"BRIDGE_CONSUMER__UNHANDLED": "drop"}, "BRIDGE_CONSUMER__UNHANDLED"),
    ],
)
def test_bad_and_contradictory_settings_name_the_variable(monkeypatch, variables, named):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_KAFKA__OPTIONS", "notjson"),
        ("BRIDGE_KAFKA__SECRET_OPTIONS", "notjson"),
        ("BRIDGE_SIGNING__KEYS", '{"k1": "x"'),
        ("BRIDGE_SIGNING__SIGN_WITH", "key-one"),
        ("BRIDGE_CONSUMER", "not-a-dict"),
    ],
)
def test_a_list_or_dict_setting_that_is_not_json_is_a_configuration_error_naming_it(monkeypatch, name, value):
    """pydantic-settings raises its own SettingsError, naming only the section: it must come out as a
    ConfigurationError (exit 2, one line) naming the variable, and never echo the value (a secret)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert name in str(info.value)
    assert "not valid JSON" in str(info.value)
    assert value not in str(info.value).replace("BRIDGE_", "")
