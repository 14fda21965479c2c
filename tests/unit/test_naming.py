import pytest

from bridge.errors import ConfigurationError
from bridge.topics import dlq_topic_name, group_id, topic_name


def test_wire_contract_names():
    assert topic_name("sguild.", "credit.released") == "sguild.credit.released"
    assert dlq_topic_name("sguild.lead.created", "platform-warehouse") == "sguild.lead.created.dlq.platform-warehouse"
    assert group_id("sguild.", "sales") == "sguild.sales"


def test_illegal_topic_names_are_refused():
    with pytest.raises(ConfigurationError, match="not a legal Kafka topic name"):
        topic_name("sguild.", "credit released")
    with pytest.raises(ConfigurationError):
        topic_name("x" * 240, ".credit.released")
