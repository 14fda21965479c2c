"""``bridge sink files``: the warehouse's events as Avro object container files (or JSON lines).

One stream per ``(event_type, schema_version)``: ``<dir>/<event_type>/v<n>/part-<time>-<id>.avro``.
Files are written under a hidden temporary name and rolled by size and age. Offsets are committed
only once the files holding the records are durable, through a small write-ahead manifest:

1. every open file is flushed, fsynced and closed;
2. a manifest listing (temporary name → final name) and the offsets to commit is written, fsynced,
   and renamed into ``<dir>/_manifests/`` (the commit point);
3. the files are renamed to their final names (directories fsynced);
4. the offsets are committed to Kafka; 5. the manifest is deleted.

At start-up a manifest left behind is finished (renames, commit) and temporary files no manifest
names are deleted: their records were never committed and are read again. So a crash never leaves
a half-written file under a final name, and every record lands in exactly one final file.
Partitions are rolled before they are revoked, so a rebalance keeps that promise too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fastavro
import fastavro.write
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge.avro import AvroCodec, is_avro, to_record
from bridge.contracts import WAREHOUSE, Contracts
from bridge.dlq import DeadLetter, DlqPublisher
from bridge.envelope import decode_json_object
from bridge.errors import ValidationError, Violation
from bridge.topics import group_id, topic_name

__all__ = ["FileSink"]

log = logging.getLogger(__name__)

_MANIFESTS = "_manifests"
_TMP = ".tmp"


@dataclass
class _OpenFile:
    temp: Path
    final: Path
    handle: Any
    writer: Any
    opened: float
    records: int = 0

    def size(self) -> int:
        return self.handle.tell()  # counts buffered bytes too: no flush needed


@dataclass
class _Progress:
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class FileSink:
    """Consumes the warehouse's topics into rolled, durable files."""

    def __init__(
        self,
        contracts: Contracts,
        kafka_config: dict[str, Any],
        directory: str | Path,
        *,
        fmt: Literal["avro", "jsonl"] = "avro",
        topic_prefix: str = "sguild.",
        max_bytes: int = 64 * 1024 * 1024,
        max_seconds: float = 60.0,
        batch_size: int = 500,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        if fmt not in ("avro", "jsonl"):
            raise ValueError(f"format must be avro or jsonl, got {fmt!r}")
        self.contracts = contracts
        self.codec = AvroCodec(contracts.registry)
        self.kafka_config = dict(kafka_config)
        self.directory = Path(directory)
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.batch_size = batch_size
        self.topics = [topic_name(topic_prefix, t) for t in contracts.registry.subscriptions(WAREHOUSE)]
        # Its own group: the files sink and the PostgreSQL warehouse sink each read everything.
        self.group_id = group_id(topic_prefix, f"{WAREHOUSE}.files")
        self._consumer_config = {
            **self.kafka_config,
            "auto.offset.reset": "earliest",
            **(consumer_overrides or {}),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "client.id": "bridge-files-sink",
        }
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._dlq: DlqPublisher | None = None
        self._open: dict[tuple[str, int], _OpenFile] = {}
        self._progress = _Progress()
        self.written = 0
        self.dead_lettered = 0
        self.rolls = 0

    def stop(self) -> None:
        self._stop.set()

    # --- running ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or self._stop
        self.directory.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._consumer = Consumer(self._consumer_config)
        self._dlq = DlqPublisher(self.kafka_config, WAREHOUSE)
        self._consumer.subscribe(self.topics, on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                for message in self._consumer.consume(self.batch_size, timeout=0.2):
                    self._take(message)
                if self._should_roll():
                    self.roll()
            self.roll()
        finally:
            self._consumer.close()
            self._dlq.close()

    def _take(self, message: Message) -> None:
        if message.error():
            if message.error().code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                log.warning("files sink: %s", message.error().str())
            return
        source = f"{message.topic()}/{message.partition()}/{message.offset()}"
        try:
            document = self._decode(message, source)
            self.contracts.validate_envelope(document, source=source)
            if self.contracts.registry.lookup(document["event_type"], document["schema_version"]) is None:
                unknown = f"unknown event type or version {document['event_type']} v{document['schema_version']}"
                raise ValidationError("envelope", [Violation("/event_type", unknown)], source=source)
        except ValidationError as exc:
            self._dlq.publish([DeadLetter(message.topic(), message.partition(), message.offset(), message.key(),
                                          message.value(), list(message.headers() or []),
                                          f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), 1)])
            self.dead_lettered += 1
        else:
            self._append(document)
            self.written += 1
        self._progress.next_offsets[(message.topic(), message.partition())] = message.offset() + 1

    def _decode(self, message: Message, source: str) -> dict[str, Any]:
        if is_avro(message.headers()):
            return self.codec.decode(message.value() or b"", source=source)
        return decode_json_object(message.value() or b"", source=source)

    # --- files --------------------------------------------------------------------------------------

    def _append(self, document: dict[str, Any]) -> None:
        key = (document["event_type"], document["schema_version"])
        current = self._open.get(key)
        if current is None:
            current = self._open[key] = self._new_file(*key)
        if self.fmt == "avro":
            current.writer.write(to_record(document, self.codec.schema(*key)))
        else:
            current.handle.write(json.dumps(document, separators=(",", ":")).encode() + b"\n")
        current.records += 1

    def _new_file(self, event_type: str, version: int) -> _OpenFile:
        folder = self.directory / event_type / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.{'avro' if self.fmt == 'avro' else 'jsonl'}"
        temp = folder / f".{name}{_TMP}"
        handle = open(temp, "wb")  # noqa: SIM115 - closed at roll
        writer = None
        if self.fmt == "avro":
            writer = fastavro.write.Writer(handle, self.codec.parsed(event_type, version), codec="deflate")
        return _OpenFile(temp, folder / name, handle, writer, time.monotonic())

    def _should_roll(self) -> bool:
        now = time.monotonic()
        return any(f.size() >= self.max_bytes or now - f.opened >= self.max_seconds for f in self._open.values()) or (
            not self._open and bool(self._progress.next_offsets)  # only dead letters since the last roll
        )

    def roll(self) -> None:
        """Make every open file durable under its final name, then commit the offsets it covers."""
        if not self._open and not self._progress.next_offsets:
            return
        files = []
        for current in self._open.values():
            if current.writer is not None:
                current.writer.flush()
            current.handle.flush()
            os.fsync(current.handle.fileno())
            current.handle.close()
            files.append((str(current.temp), str(current.final)))
        offsets = [[t, p, o] for (t, p), o in sorted(self._progress.next_offsets.items())]
        manifest = self._write_manifest(files, offsets)
        self._finish(manifest)
        self._open.clear()
        self._progress = _Progress()
        self.rolls += 1

    def _write_manifest(self, files: list, offsets: list) -> Path:
        folder = self.directory / _MANIFESTS
        folder.mkdir(exist_ok=True)
        name = f"roll-{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        temp = folder / f".{name}{_TMP}"
        with open(temp, "w") as handle:
            json.dump({"files": files, "offsets": offsets}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, folder / name)  # the commit point
        _fsync_dir(folder)
        return folder / name

    def _finish(self, manifest: Path) -> None:
        content = json.loads(manifest.read_text())
        folders = set()
        for temp, final in content["files"]:
            if os.path.exists(temp):
                os.replace(temp, final)
            folders.add(os.path.dirname(final))
        for folder in folders:
            _fsync_dir(Path(folder))
        offsets = [TopicPartition(t, p, o) for t, p, o in content["offsets"]]
        if offsets:
            self._commit(offsets)
        manifest.unlink()
        _fsync_dir(manifest.parent)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        if self._consumer is not None:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            return
        # Recovery before joining the group: commit as a standalone client of the same group.
        consumer = Consumer({**self._consumer_config})
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        finally:
            consumer.close()

    def recover(self) -> None:
        """Finish rolls a crash interrupted, and delete temporary files no manifest names."""
        folder = self.directory / _MANIFESTS
        named: set[str] = set()
        if folder.exists():
            for manifest in sorted(folder.glob("roll-*.json")):
                named |= {temp for temp, _ in json.loads(manifest.read_text())["files"]}
                log.info("files sink: finishing interrupted roll %s", manifest.name)
                self._finish(manifest)
            for leftover in folder.glob(f".*{_TMP}"):
                leftover.unlink()
        for temp in self.directory.rglob(f".*{_TMP}"):
            if str(temp) not in named:
                temp.unlink()  # never committed: its records will be read again

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.roll()
        except (OSError, KafkaException) as exc:
            log.error("files sink: roll on revoke failed: %s", exc)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
