"""bridge status reports the known numbers of a scripted scenario."""

from __future__ import annotations

import json

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from support.consumer import APP_TYPE, envelope, produce
from support.kafka import create_topics
from typer.testing import CliRunner

from bridge.cli import app

pytestmark = pytest.mark.integration


def test_status_reports_a_scripted_scenario(relay_env):
    topic = relay_env.topic(APP_TYPE)
    dlq = f"{topic}.dlq.coaching"
    create_topics(relay_env.bootstrap, [topic, dlq])
    # 10 records on coaching's topic, of which the group committed 3: lag 7.
    produce(relay_env.bootstrap, topic, [envelope(subject=f"coa_{i}") for i in range(10)])
    group = Consumer({"bootstrap.servers": relay_env.bootstrap, "group.id": f"{relay_env.prefix}coaching"})
    group.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    group.close()
    # 2 dead letters, 4 unpublished outbox rows (one quarantined), 5 inbox rows of coaching.
    produce(relay_env.bootstrap, dlq, [(b"k", b"x"), (b"k", b"y")], raw=True)
    with psycopg.connect(relay_env.database_url) as conn:
        for i in range(4):
            relay_env.outbox().emit(conn, "lesson.scheduled", 1, f"s{i}", "t", {})
        conn.commit()
        ident = sql.Identifier(relay_env.schema)
        conn.execute(sql.SQL("UPDATE {}.outbox SET failed_at = now() WHERE subject = 's3'").format(ident))
        # The oldest unpublished event was recorded an hour ago (a quarantined one, older still, does not count).
        conn.execute(
            sql.SQL("UPDATE {}.outbox SET recorded_at = now() - interval '1 hour' WHERE subject = 's0'").format(ident)
        )
        conn.execute(
            sql.SQL("UPDATE {}.outbox SET recorded_at = now() - interval '1 day' WHERE subject = 's3'").format(ident)
        )
        conn.execute(
            sql.SQL(
                'INSERT INTO {}.inbox (consumer, event_id, event_type, topic, "partition", "offset") '
                "SELECT 'coaching', 'evt_' || g, 'x', 't', 0, g FROM generate_series(1, 5) g"
            ).format(ident)
        )
        conn.commit()
    env = {
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": relay_env.prefix,
    }
    result = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["outbox_backlog"] == 3
    assert report["outbox_quarantined"] == 1
    assert 3600 <= report["outbox_oldest_age_seconds"] < 3600 + 600
    assert report["consumer_lag"][f"{relay_env.prefix}coaching"] == {topic: 7}
    assert report["dlq_depth"] == {dlq: 2}
    assert report["inbox_size"] == {"coaching": 5}
    table = CliRunner().invoke(app, ["status"], env=env)
    assert "consumer lag" in table.output
    assert "DLQ depth" in table.output


def test_status_and_dlq_list_hide_zero_rows_unless_all(relay_env):
    """A pipeline with one DLQ holding a record, one empty DLQ, a group that has read everything and
    nothing quarantined: the zero rows are hidden (and counted) unless --all; JSON of dlq list too."""
    topic = relay_env.topic(APP_TYPE)
    full, empty = f"{topic}.dlq.coaching", f"{topic}.dlq.platform-warehouse"
    create_topics(relay_env.bootstrap, [topic, full, empty])
    produce(relay_env.bootstrap, topic, [envelope(subject=f"coa_{i}") for i in range(3)])
    coaching = f"{relay_env.prefix}coaching"
    group = Consumer({"bootstrap.servers": relay_env.bootstrap, "group.id": coaching})
    group.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)  # coaching's lag: 0
    group.close()
    produce(relay_env.bootstrap, full, [(b"k", b"x")], raw=True)
    env = {
        "BRIDGE_DATABASE__URL": relay_env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": relay_env.schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": relay_env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": relay_env.prefix,
    }
    cli = CliRunner()
    report = json.loads(cli.invoke(app, ["status", "--json"], env=env).output)
    assert report["dlq_depth"] == {full: 1, empty: 0}  # what the table is made of: both are known
    assert report["consumer_lag"][coaching] == {topic: 0}
    assert report["outbox_quarantined"] == 0

    brief = cli.invoke(app, ["status"], env=env)
    assert brief.exit_code == 0, brief.output
    assert full in brief.output
    assert empty not in brief.output
    assert f"{coaching} · {topic}" not in brief.output
    assert "quarantined" not in brief.output
    assert "(3 zero row(s) hidden; --all shows them)" in brief.output
    everything = cli.invoke(app, ["status", "--all"], env=env)
    assert everything.exit_code == 0, everything.output
    assert empty in everything.output
    assert f"{coaching} · {topic}" in everything.output
    assert "quarantined" in everything.output
    assert "hidden" not in everything.output

    listed = cli.invoke(app, ["dlq", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "1 DLQ topic(s) with records (1 empty, --all shows them)" in listed.output
    assert full in listed.output
    assert empty not in listed.output
    listed_all = cli.invoke(app, ["dlq", "list", "--all"], env=env)
    assert listed_all.exit_code == 0, listed_all.output
    assert empty in listed_all.output
    assert "--all shows them" not in listed_all.output
    assert json.loads(cli.invoke(app, ["dlq", "list", "--json"], env=env).output) == {full: 1}
    assert json.loads(cli.invoke(app, ["dlq", "list", "--json", "--all"], env=env).output) == {full: 1, empty: 0}
