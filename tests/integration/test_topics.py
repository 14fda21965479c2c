"""Topic provisioning from the catalog against a real broker, and the db/outbox commands."""

from __future__ import annotations

import json

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from typer.testing import CliRunner

from bridge.cli import app
from bridge.contracts import Registry
from bridge.topics import Catalog, desired_topics
from bridge.topics.provisioning import Change, apply_plan, plan_topics

pytestmark = pytest.mark.integration

runner = CliRunner()

SMALL = """
[defaults]
partitions = 2
replication_factor = 3
min_insync_replicas = 2
retention_ms = 86400000
cleanup_policy = "delete"

[dlq]
partitions = 1
retention_ms = 172800000

[overrides."credit.released"]
partitions = 3
"""


@pytest.fixture
def catalog_file(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(SMALL)
    return path


def cli_env(relay_env) -> dict[str, str]:
    return {
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": relay_env.prefix,
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
    }


def test_more_replicas_than_brokers_is_refused_unless_fitting_is_asked_for(relay_env, catalog_file):
    env = cli_env(relay_env)
    first = next(iter(desired_topics(Catalog.load(catalog_file), Registry.load(), relay_env.prefix)))
    for command in ("plan", "apply"):
        refused = runner.invoke(app, ["topics", command, "--catalog", str(catalog_file)], env=env)
        assert refused.exit_code == 2, refused.output  # a configuration error
        assert "more replicas than the cluster has brokers (1)" in refused.output
        assert f"{first}: replication_factor 3 ([defaults])" in refused.output  # the topic and the setting
        assert "--fit-replication" in refused.output
    raw = AdminClient({"bootstrap.servers": relay_env.bootstrap})
    assert not [t for t in raw.list_topics(timeout=10).topics if t.startswith(relay_env.prefix)]  # nothing made

    fitted = runner.invoke(app, ["topics", "plan", "--catalog", str(catalog_file), "--fit-replication"], env=env)
    assert fitted.exit_code == 0, fitted.output
    assert "replication factor and min.insync.replicas of" in fitted.output
    by_setting = runner.invoke(
        app, ["topics", "plan", "--catalog", str(catalog_file)], env={**env, "BRIDGE_TOPIC_FIT_REPLICATION": "true"}
    )
    assert by_setting.exit_code == 0, by_setting.output
    assert "lowered to fit" in by_setting.output


def test_topics_apply_twice_the_second_is_a_no_op(relay_env, catalog_file):
    env = {**cli_env(relay_env), "BRIDGE_TOPIC_FIT_REPLICATION": "true"}  # one test broker
    first = runner.invoke(app, ["topics", "apply", "--catalog", str(catalog_file)], env=env)
    assert first.exit_code == 0, first.output
    wanted = desired_topics(Catalog.load(catalog_file), Registry.load(), relay_env.prefix)
    assert f"applied {len(wanted)} change(s)" in first.output
    assert "replication factor and min.insync.replicas of" in first.output

    second = runner.invoke(app, ["topics", "apply", "--catalog", str(catalog_file)], env=env)
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output
    assert "applied" not in second.output

    admin = AdminClient({"bootstrap.servers": relay_env.bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[f"{relay_env.prefix}credit.released"].partitions) == 3
    assert len(topics[f"{relay_env.prefix}lead.created"].partitions) == 2
    assert f"{relay_env.prefix}lead.created.dlq.platform-warehouse" in topics
    resource = ConfigResource(ResourceType.TOPIC, f"{relay_env.prefix}lead.created")
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["retention.ms"].value == "86400000"


def test_plan_grows_partitions_refuses_to_shrink_and_guards_destructive_changes(relay_env, catalog_file):
    admin = relay_env.clients().admin()
    raw = AdminClient({"bootstrap.servers": relay_env.bootstrap})
    registry = Registry.load()
    wanted = desired_topics(Catalog.load(catalog_file), registry, relay_env.prefix)
    apply_plan(admin, plan_topics(admin, wanted, fit_replication=True))

    catalog_file.write_text(
        SMALL.replace("partitions = 3", "partitions = 5")
        .replace("partitions = 2", "partitions = 1")
        .replace("retention_ms = 86400000", "retention_ms = 3600000")
    )
    plan = plan_topics(
        admin, desired_topics(Catalog.load(catalog_file), registry, relay_env.prefix), fit_replication=True
    )
    by_action: dict[str, list[Change]] = {}
    for change in plan.changes:
        by_action.setdefault(change.action, []).append(change)
    assert [c.topic for c in by_action["add-partitions"]] == [f"{relay_env.prefix}credit.released"]
    assert f"{relay_env.prefix}lead.created" in {c.topic for c in by_action["refused"]}
    assert all(c.destructive for c in by_action["set-config"])  # lower retention deletes data

    env = {**cli_env(relay_env), "BRIDGE_TOPIC_FIT_REPLICATION": "true"}
    result = runner.invoke(app, ["topics", "apply", "--catalog", str(catalog_file)], env=env)
    assert result.exit_code == 2  # a configuration error
    assert "refusing destructive topic changes" in result.output
    assert len(raw.list_topics(timeout=10).topics[f"{relay_env.prefix}credit.released"].partitions) == 3

    result = runner.invoke(
        app,
        ["topics", "apply", "--catalog", str(catalog_file), "--allow-destructive", "--fit-replication"],
        env=cli_env(relay_env),
    )
    assert result.exit_code == 0, result.output
    assert len(raw.list_topics(timeout=10).topics[f"{relay_env.prefix}credit.released"].partitions) == 5


def test_db_and_outbox_commands(relay_env):
    env = cli_env(relay_env)
    result = runner.invoke(app, ["db", "migrate"], env=env)
    assert result.exit_code == 0
    assert "up to date" in result.output
    result = runner.invoke(app, ["db", "status"], env=env)
    assert result.exit_code == 0
    assert "version 4 of 4" in result.output
    fresh = {**env, "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema[:50] + "_new"}
    assert runner.invoke(app, ["db", "status"], env=fresh).exit_code == 1
    assert "applied 1, 2, 3" in runner.invoke(app, ["db", "migrate"], env=fresh).output
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{fresh["BRIDGE_DATABASE__SCHEMA_NAME"]}" CASCADE')

    with psycopg.connect(relay_env.database_url) as conn:
        event = relay_env.outbox().emit(conn, "lesson.scheduled", 1, "s1", "t", {"n": 1})
        conn.commit()
        conn.execute(f'UPDATE "{relay_env.schema}".outbox SET failed_at = now(), failure = %s', ("oversized: test",))
        conn.commit()
    result = runner.invoke(app, ["outbox", "failed", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["event_id"] == event.event_id
    assert row["failure"] == "oversized: test"
    assert "oversized: test" in runner.invoke(app, ["outbox", "failed"], env=env).output
    assert runner.invoke(app, ["outbox", "retry"], env=env).exit_code == 2
    result = runner.invoke(app, ["outbox", "retry", str(row["id"])], env=env)
    assert "re-queued 1 row(s)" in result.output
    assert "no quarantined rows" in runner.invoke(app, ["outbox", "failed"], env=env).output
