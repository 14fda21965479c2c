"""What the relay relies on from the outbox (bridge.outbox.source.OutboxSource), checked on the
in-memory model the engine tests use and on PostgreSQL alike.

The relay's unit tests trust :class:`~support.memory_outbox.MemoryOutbox` to behave like
:class:`~bridge.outbox.store.OutboxStore`; these tests are what makes that trust earned. Each runs
the same steps on ``memory`` (no services) and ``postgres`` (a migrated schema, events written by
:class:`~bridge.outbox.Outbox` in real transactions), and asserts only on what the port returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import psycopg
import pytest
from psycopg import sql
from support.memory_outbox import MemoryOutbox, MemoryTransaction
from support.outbox import BULK_TYPE, CONTRACTS

from bridge.outbox import Outbox, OutboxSource, PostgresOutbox, ReadRequest, migrate


class Transaction(Protocol):
    def emit(self, subject: str) -> int: ...
    def commit(self) -> None: ...


class Backend(Protocol):
    def emit(self, subject: str) -> int:
        """Write one event in a committed transaction of its own; its outbox id."""

    def begin(self) -> Transaction:
        """An open writing transaction (the application's)."""

    def connect(self) -> AbstractContextManager[OutboxSource]:
        """A relay's session."""


class MemoryTxn:
    def __init__(self, txn: MemoryTransaction) -> None:
        self.txn = txn

    def emit(self, subject: str) -> int:
        return self.txn.emit(subject).id

    def commit(self) -> None:
        self.txn.commit()


class MemoryBackend:
    def __init__(self) -> None:
        self.outbox = MemoryOutbox()

    def emit(self, subject: str) -> int:
        return self.outbox.emit(subject).id

    def begin(self) -> Transaction:
        return MemoryTxn(self.outbox.begin())

    def connect(self) -> AbstractContextManager[OutboxSource]:
        return self.outbox.connect()


class PostgresTxn:
    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.conn = psycopg.connect(backend.url)  # not autocommit: stays open until commit()

    def emit(self, subject: str) -> int:
        return self.backend.write(self.conn, subject)

    def commit(self) -> None:
        self.conn.commit()
        self.conn.close()


class PostgresBackend:
    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.outbox = Outbox(CONTRACTS, "delivery", schema=schema)
        self.connector = PostgresOutbox(url, schema)
        self.open: list[PostgresTxn] = []

    def write(self, conn: psycopg.Connection, subject: str) -> int:
        envelope = self.outbox.emit(conn, BULK_TYPE, 1, subject, "t", {"n": 1})
        query = sql.SQL("SELECT id FROM {}.outbox WHERE event_id = %s").format(sql.Identifier(self.schema))
        row = conn.execute(query, (envelope.event_id,)).fetchone()
        assert row is not None
        return int(row[0])

    def emit(self, subject: str) -> int:
        with psycopg.connect(self.url) as conn:
            return self.write(conn, subject)

    def begin(self) -> Transaction:
        txn = PostgresTxn(self)
        self.open.append(txn)
        return txn

    def connect(self) -> AbstractContextManager[OutboxSource]:
        return self.connector()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, unique_name: Callable[[str], str]) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    url = request.getfixturevalue("postgres_service").url
    schema = unique_name("src")[:63]
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schema)
    backend = PostgresBackend(url, schema)
    try:
        yield backend
    finally:
        for txn in backend.open:
            txn.conn.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_a_read_returns_committed_rows_in_id_order_up_to_its_limit(backend: Backend) -> None:
    ids = [backend.emit(f"s{i}") for i in range(5)]
    with backend.connect() as source:
        first = source.read(ReadRequest(0, 3))
        assert [row.id for row in first.rows] == ids[:3]
        assert first.range_full
        rest = source.read(ReadRequest(first.rows[-1].id, 10))
        assert [row.id for row in rest.rows] == ids[3:]
        assert not rest.range_full
        assert [row.subject for row in first.rows + rest.rows] == [f"s{i}" for i in range(5)]


def test_a_read_deletes_what_it_is_given_first_in_the_same_round_trip(backend: Backend) -> None:
    ids = [backend.emit("s") for _ in range(3)]
    with backend.connect() as source:
        assert source.try_lead()
        source.read(ReadRequest(0, 10))
        result = source.read(ReadRequest(ids[-1], 10, delete=ids[:2]))
        assert result.leading
        assert result.deleted_by is not None
        assert result.deleted_by > 0
        assert source.stats().backlog == 1
        again = source.read(ReadRequest(0, 10))
        assert [row.id for row in again.rows] == ids[2:]
        # Deleting again (a retried round trip) is harmless.
        source.read(ReadRequest(0, 10, delete=ids[:2]))
        assert source.stats().backlog == 1
        assert source.read(ReadRequest(0, 10, exclude=ids[2:])).rows == []


def test_a_late_commit_leaves_a_gap_that_is_read_by_id(backend: Backend) -> None:
    late = backend.begin()
    late_id = late.emit("late")
    early_id = backend.emit("early")
    assert early_id > late_id
    with backend.connect() as source:
        result = source.read(ReadRequest(0, 10))
        assert [row.id for row in result.rows] == [early_id]
        late.commit()
        found = source.read(ReadRequest(early_id, 10, gaps=[late_id]))
        assert [row.id for row in found.rows] == [late_id]
        assert not found.range_full


def test_a_transaction_running_at_start_is_watched_until_it_ends(backend: Backend) -> None:
    running = backend.begin()
    running_id = running.emit("running")
    with backend.connect() as source:
        start = source.start()
        assert start.watch or start.watch_all_below is not None
        assert start.last_id >= running_id
        request = ReadRequest(start.last_id, 10, watch=sorted(start.watch), watch_all_below=start.watch_all_below)
        before = source.read(request)
        assert before.rows == []
        assert not before.ended
        assert not before.from_start
        running.commit()
        after = source.read(request)
        assert after.ended
        assert after.from_start
        assert [row.id for row in after.rows] == [running_id]


def test_one_session_leads_at_a_time(backend: Backend) -> None:
    backend.emit("s")
    with backend.connect() as first, backend.connect() as second:
        assert first.try_lead()
        assert not second.try_lead()
        assert first.read(ReadRequest(0, 10)).leading
        assert not second.read(ReadRequest(0, 10)).leading
    with backend.connect() as third:
        assert third.try_lead()  # the lock went with the session that held it


def test_a_quarantined_row_is_not_read_and_holds_its_subject(backend: Backend) -> None:
    bad = backend.emit("held")
    good = backend.emit("fine")
    with backend.connect() as source:
        assert source.quarantine(bad, "test: poison")
        assert not source.quarantine(bad, "test: twice")
        assert source.held_subjects() == {"held"}
        assert [row.id for row in source.read(ReadRequest(0, 10)).rows] == [good]
        stats = source.stats()
        assert stats.quarantined == 1
        attempts = source.record_attempt([good], "test: failed once")
        assert attempts == {good: 1}
        assert source.record_attempt([good], "test: failed twice") == {good: 2}
