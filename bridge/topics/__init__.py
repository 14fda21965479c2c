"""Topics: the wire contract's names (and, later, provisioning from the catalog in ``topics/``)."""

from bridge.topics.naming import dlq_topic_name, group_id, topic_name

__all__ = ["dlq_topic_name", "group_id", "topic_name"]
