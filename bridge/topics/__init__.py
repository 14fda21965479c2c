"""Topics: the wire contract's names, the catalog in ``topics/``, and provisioning."""

from bridge.topics.catalog import Catalog, TopicSpec, catalog_path, desired_topics
from bridge.topics.naming import dlq_topic_name, group_id, replay_topic_name, topic_name

__all__ = [
    "Catalog",
    "TopicSpec",
    "catalog_path",
    "desired_topics",
    "dlq_topic_name",
    "group_id",
    "replay_topic_name",
    "topic_name",
]
