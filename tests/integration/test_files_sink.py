"""The files sink: SIGKILL while writing leaves only complete files, which together hold every
record exactly once, readable by fastavro with the right schema; JSON lines too."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import fastavro
import pytest
from support.consumer import envelope, produce, relay_like_producer
from support.kafka import create_topics
from support.outbox import CONTRACTS, Env, wait_until
from support.process import BridgeProcess

from bridge.avro import avro_schema
from bridge.envelope import Envelope
from bridge.kafka.records import TopicPartition
from bridge.lifecycle import ServiceThread
from bridge.wiring import build_file_sink

pytestmark = pytest.mark.integration

TYPES = ["lead.created", "lead.reached", "payment.failed"]


class FilesProcess(BridgeProcess):
    def __init__(self, env: Env, log_dir: Path, out: Path) -> None:
        super().__init__(log_dir, "files")
        self.env, self.out = env, out

    def command(self) -> list[str]:
        return ["sink", "files", "--dir", str(self.out), "--max-seconds", "0.3", "--max-bytes", "20000"]

    def environ(self) -> dict[str, str]:
        return self.env.environ(BRIDGE_CONSUMER__SESSION_TIMEOUT_MS="6000")


def events_for(count: int) -> list[Envelope]:
    from support.schemas import example_for

    made = []
    for i in range(count):
        event_type = TYPES[i % len(TYPES)]
        version = CONTRACTS.registry.lookup(event_type, 1)
        assert version is not None
        schema_file = CONTRACTS.registry.schema_file(version)
        assert schema_file is not None
        schema = json.loads(schema_file.read_text())
        made.append(envelope(event_type, 1, subject=f"s{i % 17}", payload=example_for(schema)))
    return made


def topics(env: Env) -> list[str]:
    return [env.topic(t) for t in TYPES]


def final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("part-*") if not p.name.startswith("."))


def read_avro(out: Path) -> list[str]:
    ids = []
    for path in final_files(out):
        event_type, version = path.parent.parent.name, int(path.parent.name[1:])
        with open(path, "rb") as handle:
            reader = fastavro.reader(handle, reader_schema=avro_schema(CONTRACTS.registry, event_type, version))
            for record in reader:
                assert isinstance(record, dict)
                assert record["event_type"] == event_type
                assert record["schema_version"] == version
                ids.append(record["event_id"])
    return ids


def test_sigkill_while_writing_leaves_complete_files_holding_each_record_once(relay_env, tmp_path):
    create_topics(relay_env.bootstrap, topics(relay_env), partitions=2)
    out = tmp_path / "files"
    made = events_for(3000)
    process = FilesProcess(relay_env, tmp_path, out)
    rng = random.Random(5)
    stop = threading.Event()

    def producing() -> None:
        producer = relay_like_producer(relay_env.bootstrap)  # one for all: an idempotent producer's start is slow
        for start in range(0, len(made), 100):
            chunk = made[start : start + 100]
            for event_type in TYPES:
                produce(
                    relay_env.bootstrap,
                    relay_env.topic(event_type),
                    [e for e in chunk if e.event_type == event_type],
                    producer=producer,
                )
            time.sleep(0.05)
        stop.set()

    writer = threading.Thread(target=producing)
    writer.start()
    process.start()
    kills = 0
    try:
        while not stop.is_set() or kills < 5:
            time.sleep(rng.uniform(0.5, 2.0))
            process.kill()
            kills += 1
            for path in final_files(out):  # after every crash: complete files only
                if path.suffix == ".avro":
                    with open(path, "rb") as handle:
                        sum(1 for _ in fastavro.reader(handle))
            process.start()
        writer.join()
        wait_until(lambda: len(read_avro(out)) >= len(made), timeout=120, message="every record in a final file")
        assert process.terminate() == 0, process.log()[-2000:]
    finally:
        process.kill()
    ids = read_avro(out)
    assert sorted(ids) == sorted(e.event_id for e in made), f"{len(ids)} records for {len(made)} events"
    assert not list(out.rglob(".*.tmp")), "temporary files left after a graceful stop"
    assert all(p.suffix == ".avro" for p in final_files(out))


def test_jsonl_files_and_poison(relay_env, tmp_path):
    create_topics(
        relay_env.bootstrap, [*topics(relay_env), f"{relay_env.topic('lead.created')}.dlq.platform-warehouse"]
    )
    made = events_for(30)
    for event_type in TYPES:
        produce(relay_env.bootstrap, relay_env.topic(event_type), [e for e in made if e.event_type == event_type])
    produce(relay_env.bootstrap, relay_env.topic("lead.created"), [(b"k", b"poison")], raw=True)
    sink = build_file_sink(relay_env.settings(), tmp_path / "out", fmt="jsonl", max_seconds=0.2)
    thread = ServiceThread(sink).start()
    try:
        wait_until(lambda: sink.written == 30 and sink.dead_lettered == 1 and sink.rolls > 0, message="the files")
    finally:
        thread.stop(timeout=60)
    lines = [json.loads(line) for path in final_files(tmp_path / "out") for line in path.read_text().splitlines()]
    assert sorted(d["event_id"] for d in lines) == sorted(e.event_id for e in made)
    assert {p.parent.parent.name for p in final_files(tmp_path / "out")} == set(TYPES)


class Crash(Exception):
    """Stands for the process dying at a named point."""


def test_a_roll_interrupted_at_its_commit_point_is_finished_at_start_up(relay_env, tmp_path, monkeypatch, caplog):
    """The recovery branch, forced: the first sink dies at the commit point of a roll (its manifest
    durable, nothing renamed, no offset committed). The next sink finishes that roll before it
    reads: the files get their final names, the manifest's offsets are committed, the manifest is
    deleted, a temporary file no manifest names is deleted, and no record is read twice."""
    create_topics(relay_env.bootstrap, topics(relay_env))
    made = events_for(30)
    for event_type in TYPES:
        produce(relay_env.bootstrap, relay_env.topic(event_type), [e for e in made if e.event_type == event_type])
    out = tmp_path / "out"
    first = build_file_sink(relay_env.settings(), out, fmt="jsonl", max_seconds=3600)  # rolls only at the stop

    def die_at_the_commit_point(manifest: Path) -> None:
        raise Crash(str(manifest))

    monkeypatch.setattr(first, "_finish", die_at_the_commit_point)
    thread = ServiceThread(first).start()
    wait_until(lambda: first.written == 30, message="the records in open files")
    with pytest.raises(Crash):
        thread.stop(timeout=60)  # the stop rolls: manifest written, then the crash
    (manifest,) = (out / "_manifests").glob("roll-*.json")
    planned = json.loads(manifest.read_text())
    assert len(planned["files"]) == len(TYPES)
    assert final_files(out) == []
    assert all(Path(temp).exists() for temp, _ in planned["files"])
    assert committed(relay_env) == {}  # the crash came before the offset commit
    orphan = out / "lead.created" / "v1" / ".part-never-named.jsonl.tmp"
    orphan.write_bytes(b'{"half a rec')

    second = build_file_sink(relay_env.settings(), out, fmt="jsonl", max_seconds=0.2)
    with caplog.at_level("INFO", logger="bridge.sinks.files"):
        thread = ServiceThread(second).start(wait_started=30)
        # Recovery ran before the sink joined its group:
        assert f"finishing interrupted roll {manifest.name}" in caplog.text
        assert not manifest.exists()
        assert not orphan.exists()
        assert sorted(str(p) for p in final_files(out)) == sorted(final for _, final in planned["files"])
        assert committed(relay_env) == {(t, p): o for t, p, o in planned["offsets"]}
        assert sum(o for _, _, o in planned["offsets"]) == 30
        late = events_for(1)
        produce(relay_env.bootstrap, relay_env.topic(TYPES[0]), late)
        try:
            wait_until(lambda: second.written >= 1 and second.rolls >= 1, message="the event after the recovery")
        finally:
            thread.stop(timeout=60)
    assert second.written == 1  # the 30 recovered records were not read again
    lines = [json.loads(line) for path in final_files(out) for line in path.read_text().splitlines()]
    assert sorted(d["event_id"] for d in lines) == sorted(e.event_id for e in [*made, *late])


def committed(env: Env) -> dict[tuple[str, int], int]:
    """The files sink group's committed offsets on every partition of its topics."""
    admin = env.clients().admin()
    try:
        partitions = [TopicPartition(t, 0) for t in topics(env)]
        found = admin.committed_offsets(f"{env.prefix}platform-warehouse.files", partitions, 10.0)
    finally:
        admin.close()
    return {(tp.topic, tp.partition): offset for tp, offset in found.items()}
