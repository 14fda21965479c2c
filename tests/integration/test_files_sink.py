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
from support.consumer import envelope, produce
from support.kafka import create_topics
from support.outbox import CONTRACTS, Env, wait_until
from support.process import BridgeProcess

from bridge.avro import avro_schema
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


def events_for(count: int) -> list:
    from support.schemas import example_for

    made = []
    for i in range(count):
        event_type = TYPES[i % len(TYPES)]
        schema = json.loads(CONTRACTS.registry.schema_file(CONTRACTS.registry.lookup(event_type, 1)).read_text())
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
        for start in range(0, len(made), 100):
            chunk = made[start : start + 100]
            for event_type in TYPES:
                produce(
                    relay_env.bootstrap, relay_env.topic(event_type), [e for e in chunk if e.event_type == event_type]
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
