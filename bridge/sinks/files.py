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

Records are read like any consumer reads them (:class:`~bridge.consumer.reading.RecordReader`):
decoded, signature-verified when signatures are required, validated and checked against their
topic; what fails goes to the DLQ, and so does an event of a version the contracts do not know.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import fastavro
import fastavro.write

from bridge.avro import AvroCodec, to_record
from bridge.clock import Clock, SystemClock
from bridge.consumer.reading import RecordReader
from bridge.contracts import Contracts
from bridge.dlq import DeadLetterRecord, DlqPublisher, reason_of
from bridge.errors import KafkaError, ValidationError, Violation
from bridge.kafka.ports import Consumer, KafkaClients
from bridge.kafka.records import Record, TopicPartition
from bridge.lifecycle import Health, ServiceState
from bridge.topics.naming import group_id, topic_name

__all__ = ["FileSink"]

log = logging.getLogger("bridge.sinks.files")

_MANIFESTS = "_manifests"
_TMP = ".tmp"


@dataclass
class _OpenFile:
    temp: Path
    final: Path
    handle: IO[bytes]
    writer: Any
    opened: float
    records: int = 0

    def size(self) -> int:
        return self.handle.tell()  # counts buffered bytes too: no flush needed


@dataclass
class _Progress:
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)


class FileSink:
    """Consumes the warehouse's topics into rolled, durable files."""

    name = "files-sink"

    def __init__(
        self,
        contracts: Contracts,
        clients: KafkaClients,
        reader: RecordReader,
        directory: str | Path,
        *,
        topic_prefix: str,
        consumer: str,
        fmt: Literal["avro", "jsonl"] = "avro",
        max_bytes: int = 64 * 1024 * 1024,
        max_seconds: float = 60.0,
        batch_size: int = 500,
        poll_timeout: float = 0.2,
        dlq_timeout: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if fmt not in ("avro", "jsonl"):
            raise ValueError(f"format must be avro or jsonl, got {fmt!r}")
        self.contracts = contracts
        self.codec = AvroCodec(contracts.registry)
        self.reader = reader
        self.directory = Path(directory)
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.dlq_timeout = dlq_timeout
        self.consumer = consumer
        self.clock = clock or SystemClock()
        self.state = ServiceState("files sink", self.clock)
        self.topics = [topic_name(topic_prefix, t) for t in contracts.registry.subscriptions(consumer)]
        # Its own group: the files sink and the PostgreSQL warehouse sink each read everything.
        self.group_id = group_id(topic_prefix, f"{consumer}.files")
        self._clients = clients
        self._consumer: Consumer | None = None
        self._dlq: DlqPublisher | None = None
        self._open: dict[tuple[str, int], _OpenFile] = {}
        self._progress = _Progress()
        self._roll_failed = False
        self.written = 0
        self.dead_lettered = 0
        self.rolls = 0

    @property
    def started(self) -> threading.Event:
        return self.state.started

    def health(self) -> Health:
        return self.state.health()

    def stop(self) -> None:
        self.state.stop()

    # --- running ------------------------------------------------------------------------------------

    def run(self) -> None:
        stopping = self.state.stopping
        self.directory.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._consumer = self._clients.consumer(
            self.group_id, client_id="bridge-files-sink", commit_in_background=False
        )
        self._dlq = DlqPublisher(self._clients, self.consumer, timeout=self.dlq_timeout, clock=self.clock)
        self._consumer.subscribe(self.topics, self)
        self.state.started.set()
        self.state.set_ready(True, "consuming")
        try:
            while not stopping.is_set():
                self.state.beat()
                for record in self._consumer.consume(self.batch_size, self.poll_timeout):
                    self._take(record)
                if self._should_roll():
                    self.roll()
            self.roll()
        finally:
            self._consumer.close()
            self._dlq.close()

    def _take(self, record: Record) -> None:
        try:
            delivery = self.reader.read(record)
            document = delivery.envelope
            if self.contracts.registry.lookup(document.event_type, document.schema_version) is None:
                unknown = f"unknown event type or version {document.event_type} v{document.schema_version}"
                raise ValidationError("envelope", [Violation("/event_type", unknown)], source=record.source)
        except ValidationError as exc:
            assert self._dlq is not None
            self._dlq.publish(
                [
                    DeadLetterRecord(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        list(record.headers),
                        f"{type(exc).__module__}.{type(exc).__qualname__}",
                        str(exc),
                        1,
                        reason=reason_of(exc),
                    )
                ]
            )
            self.dead_lettered += 1
        else:
            self._append(json.loads(document.to_json()))
            self.written += 1
        self._progress.next_offsets[record.tp] = record.offset + 1

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
        return _OpenFile(temp, folder / name, handle, writer, self.clock.monotonic())

    def _should_roll(self) -> bool:
        now = self.clock.monotonic()
        return any(f.size() >= self.max_bytes or now - f.opened >= self.max_seconds for f in self._open.values()) or (
            not self._open and bool(self._progress.next_offsets)  # only dead letters since the last roll
        )

    def roll(self) -> None:
        """Make every open file durable under its final name, then commit the offsets it covers.

        A roll that failed part-way (a full disk, the broker gone at the commit) is never tried
        again by this process: its files are closed and its manifest may be durable, so only the
        recovery at the next start may finish it (another roll could commit offsets for records
        whose files it never renamed). The revoke on the way out would otherwise roll again."""
        if self._roll_failed:
            log.error("files sink: an earlier roll failed; not rolling again (the next start recovers it)")
            return
        if not self._open and not self._progress.next_offsets:
            return
        self._roll_failed = True
        files = []
        for current in self._open.values():
            if current.writer is not None:
                current.writer.flush()
            current.handle.flush()
            os.fsync(current.handle.fileno())
            current.handle.close()
            files.append((str(current.temp), str(current.final)))
        offsets = [[tp.topic, tp.partition, o] for tp, o in sorted(self._progress.next_offsets.items())]
        manifest = self._write_manifest(files, offsets)
        self._finish(manifest)
        self._open.clear()
        self._progress = _Progress()
        self.rolls += 1
        self._roll_failed = False

    def _write_manifest(self, files: list[tuple[str, str]], offsets: list[list[Any]]) -> Path:
        folder = self.directory / _MANIFESTS
        folder.mkdir(exist_ok=True)
        name = f"roll-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.json"
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
        offsets = {TopicPartition(t, p): o for t, p, o in content["offsets"]}
        if offsets:
            self._commit(offsets)
        manifest.unlink()
        _fsync_dir(manifest.parent)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._consumer is not None:
            self._consumer.commit(offsets)
            return
        # Recovery before joining the group: commit as a standalone client of the same group.
        consumer = self._clients.consumer(
            self.group_id, client_id="bridge-files-sink-recovery", commit_in_background=False
        )
        try:
            consumer.commit(offsets)
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

    # --- rebalancing (the RebalanceListener of our consumer) ----------------------------------------

    def on_assign(self, partitions: Sequence[TopicPartition]) -> None:
        log.info("files sink: assigned %s", ", ".join(map(str, partitions)))

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        try:
            self.roll()
        except (OSError, KafkaError) as exc:
            log.error("files sink: roll on revoke failed: %s", exc)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
