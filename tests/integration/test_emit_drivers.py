"""emit through the connections teams use: SQLAlchemy 2 (sync and async, over psycopg, psycopg2 and
asyncpg), Django, psycopg2 and asyncpg. A commit publishes the event, a rollback publishes nothing,
and a connection outside a transaction is refused with advice that works for its driver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest
import support.apps as support_apps
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from support.kafka import create_topics, read_all
from support.outbox import BULK_TYPE, CONTRACTS, Env, relay_thread, wait_until

from bridge.errors import OutboxError
from bridge.outbox import AsyncOutbox, Outbox

pytestmark = pytest.mark.integration


def url_for(env: Env, driver: str) -> str:
    """The database URL in a driver's dialect (``postgresql+psycopg://…``)."""
    info = psycopg.conninfo.conninfo_to_dict(env.database_url)
    return f"postgresql+{driver}://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"


@pytest.fixture
def orders(relay_env: Env) -> Env:
    """A business table beside the outbox, so each emit commits (or not) with a real write."""
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.orders (id text PRIMARY KEY)").format(sql.Identifier(relay_env.schema)))
    create_topics(relay_env.bootstrap, [relay_env.topic()])
    return relay_env


def insert_order(schema: str) -> str:
    return f'INSERT INTO "{schema}".orders (id) VALUES (:id)'


def outbox(env: Env) -> Outbox:
    return Outbox(CONTRACTS, "delivery", schema=env.schema)


def emit_sqlalchemy(env: Env, driver: str, *, commit: bool, subject: str) -> str:
    engine = create_engine(url_for(env, driver))
    try:
        with Session(engine) as session:
            session.execute(text(insert_order(env.schema)), {"id": subject})
            event = outbox(env).emit(session, BULK_TYPE, 1, subject, "t1", {"order": subject})
            if commit:
                session.commit()
            else:
                session.rollback()
        return event.event_id
    finally:
        engine.dispose()


def emit_sqlalchemy_async(env: Env, driver: str, *, commit: bool, subject: str) -> str:
    async def main() -> str:
        engine = create_async_engine(url_for(env, driver))
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text(insert_order(env.schema)), {"id": subject})
                event = await AsyncOutbox(CONTRACTS, "delivery", schema=env.schema).emit(
                    session, BULK_TYPE, 1, subject, "t1", {"order": subject}
                )
                await (session.commit() if commit else session.rollback())
            return event.event_id
        finally:
            await engine.dispose()

    return asyncio.run(main())


def emit_psycopg2(env: Env, *, commit: bool, subject: str) -> str:
    conn = psycopg2.connect(env.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'INSERT INTO "{env.schema}".orders (id) VALUES (%s)', (subject,))
        event = outbox(env).emit(conn, BULK_TYPE, 1, subject, "t1", {"order": subject})
        conn.commit() if commit else conn.rollback()
        return event.event_id
    finally:
        conn.close()


def emit_asyncpg(env: Env, *, commit: bool, subject: str) -> str:
    async def main() -> str:
        conn = await asyncpg.connect(env.database_url)
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(f'INSERT INTO "{env.schema}".orders (id) VALUES ($1)', subject)
            event = await AsyncOutbox(CONTRACTS, "delivery", schema=env.schema).emit(
                conn, BULK_TYPE, 1, subject, "t1", {"order": subject}
            )
            await (transaction.commit() if commit else transaction.rollback())
            return event.event_id
        finally:
            await conn.close()

    return asyncio.run(main())


def emit_django(env: Env, *, commit: bool, subject: str) -> str:
    from django.db import connection, transaction

    configure_django(env)

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(f'INSERT INTO "{env.schema}".orders (id) VALUES (%s)', [subject])
            event = outbox(env).emit(connection, BULK_TYPE, 1, subject, "t1", {"order": subject})
            if not commit:
                raise Rollback
    except Rollback:
        pass
    finally:
        connection.close()
    return event.event_id


def configure_django(env: Env) -> None:
    support_apps.configure_django(env.database_url)


EMITTERS: dict[str, Callable[..., str]] = {
    "sqlalchemy+psycopg": lambda env, **kw: emit_sqlalchemy(env, "psycopg", **kw),
    "sqlalchemy+psycopg2": lambda env, **kw: emit_sqlalchemy(env, "psycopg2", **kw),
    "sqlalchemy-async+asyncpg": lambda env, **kw: emit_sqlalchemy_async(env, "asyncpg", **kw),
    "sqlalchemy-async+psycopg": lambda env, **kw: emit_sqlalchemy_async(env, "psycopg", **kw),
    "django": emit_django,
    "psycopg2": emit_psycopg2,
    "asyncpg": emit_asyncpg,
}


def test_commit_publishes_and_rollback_publishes_nothing_through_every_driver(orders: Env) -> None:
    committed, rolled_back = {}, {}
    for name, emitter in EMITTERS.items():
        committed[name] = emitter(orders, commit=True, subject=f"{name}-kept")
        rolled_back[name] = emitter(orders, commit=False, subject=f"{name}-gone")
    with psycopg.connect(orders.database_url) as conn:
        stored = {
            row[0] for row in conn.execute(sql.SQL("SELECT id FROM {}.orders").format(sql.Identifier(orders.schema)))
        }
    assert stored == {f"{name}-kept" for name in EMITTERS}  # the business write followed the same fate
    with relay_thread(orders) as relay:
        wait_until(lambda: relay.published == len(EMITTERS), message="the committed events")
    records = read_all(orders.bootstrap, [orders.topic()], expect=len(EMITTERS))
    assert sorted(r.event_id for r in records) == sorted(committed.values())
    assert not set(rolled_back.values()) & {r.event_id for r in records}


def test_a_connection_outside_a_transaction_is_refused_with_advice_for_its_driver(orders: Env) -> None:
    def refusal(call: Callable[[], Any]) -> str:
        with pytest.raises(OutboxError) as info:
            call()
        return str(info.value)

    with psycopg.connect(orders.database_url, autocommit=True) as conn:
        assert "with conn.transaction()" in refusal(lambda: outbox(orders).emit(conn, BULK_TYPE, 1, "s", "t", {}))
        with conn.transaction():  # what the advice says works
            outbox(orders).emit(conn, BULK_TYPE, 1, "s", "t", {})
    raw = psycopg2.connect(orders.database_url)
    raw.autocommit = True
    try:
        assert "autocommit = False" in refusal(lambda: outbox(orders).emit(raw, BULK_TYPE, 1, "s", "t", {}))
    finally:
        raw.close()
    engine = create_engine(url_for(orders, "psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with Session(engine) as session:
            assert "AUTOCOMMIT" in refusal(lambda: outbox(orders).emit(session, BULK_TYPE, 1, "s", "t", {}))
    finally:
        engine.dispose()

    async def asyncpg_refusal() -> str:
        conn = await asyncpg.connect(orders.database_url)
        try:
            with pytest.raises(OutboxError) as info:
                await AsyncOutbox(CONTRACTS, "delivery", schema=orders.schema).emit(conn, BULK_TYPE, 1, "s", "t", {})
            return str(info.value)
        finally:
            await conn.close()

    assert "async with conn.transaction()" in asyncio.run(asyncpg_refusal())
    configure_django(orders)
    from django.db import connection

    try:
        assert "transaction.atomic()" in refusal(lambda: outbox(orders).emit(connection, BULK_TYPE, 1, "s", "t", {}))
    finally:
        connection.close()
    assert "cannot write through a builtins.dict" in refusal(
        lambda: outbox(orders).emit({}, BULK_TYPE, 1, "s", "t", {})
    )
