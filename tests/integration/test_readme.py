"""The README's snippets, run as a reader would run them, against a real PostgreSQL and Kafka.

A snippet is a fenced ``python`` (or ``sql``) block preceded by ``<!-- readme-test: NAME -->``. The
test of each supplies what the snippet takes from the reader's own code (``shop.db.engine``,
``shop.models.Order``, ``sales.models.LedgerEntry``: stand-in modules in ``sys.modules``) and the
``BRIDGE_*`` environment, runs the snippet as written, then checks its effect: the order and its
event committed together in the outbox, or every event applied to the ledger exactly once.

- "Adopting bridge": emit from SQLAlchemy and from Django, with contracts made by ``bridge init``;
- "Consumers": the ledger table, then the same handler per event, on the bulk path, as an ``async
  def`` running in the service's event loop, through a SQLAlchemy session and through Django.

The tables are unqualified in the README (the reader's default schema); here every connection
resolves them in the test's own schema (``search_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from support.apps import configure_django
from support.consumer import consumer_thread, envelope, produce
from support.kafka import create_topics
from support.outbox import CONTRACTS, Env, wait_until

from bridge.consumer import ConsumerApp
from bridge.contracts.scaffold import Scaffold, scaffold
from bridge.envelope import Envelope, parse_timestamp
from bridge.fakes import PayloadFaker
from bridge.topics import replay_topic_name

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
MARKED = re.compile(r"<!-- readme-test: ([a-z0-9-]+) -->\n```(?:python|sql)\n(.*?)\n```", re.DOTALL)

#: Every marked snippet, and what runs it.
RUN_BY = {
    "emit-sqlalchemy": "test_emit_from_sqlalchemy",
    "emit-django": "test_emit_from_django",
    "ledger-table": "the ledger fixture of the consumer tests",
    "consumer-handler": "test_a_per_event_handler",
    "consumer-rows": "test_the_bulk_path",
    "consumer-async": "test_async_handlers_in_the_service_event_loop",
    "consumer-sqlalchemy": "test_an_orm_handler_with_sqlalchemy",
    "consumer-django": "test_an_orm_handler_with_django",
}

#: What the consumer snippets handle: credit.released v2, which the registry gives to sales.
EVENT = "credit.released"
EVENTS = 24


def snippets() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, code in MARKED.findall(README.read_text(encoding="utf-8")):
        assert name not in found, f"README.md has two snippets named {name}"
        found[name] = code
    return found


def test_every_marked_snippet_is_run_here() -> None:
    assert set(snippets()) == set(RUN_BY)


def run_snippet(name: str, monkeypatch: pytest.MonkeyPatch, **modules: dict[str, Any]) -> dict[str, Any]:
    """Run README snippet ``name`` as a module; ``modules`` stand in for the reader's own, e.g.
    ``**{"shop.models": {"Order": Order}}``. Returns the snippet's globals."""
    for dotted, attributes in modules.items():
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):
            module_name = ".".join(parts[:depth])
            if depth < len(parts) and module_name in sys.modules:
                continue
            module = types.ModuleType(module_name)
            module.__path__ = []  # a package: its submodules import
            monkeypatch.setitem(sys.modules, module_name, module)
        for attribute, value in attributes.items():
            setattr(sys.modules[dotted], attribute, value)
    namespace: dict[str, Any] = {"__name__": "readme_" + name.replace("-", "_")}
    code = compile(snippets()[name], f"README.md <!-- readme-test: {name} -->", "exec")
    exec(code, namespace)  # noqa: S102 - the README's own code, which is the point
    return namespace


def with_search_path(env: Env) -> Env:
    """``env`` with connections that resolve unqualified table names in its schema."""
    url = psycopg.conninfo.make_conninfo(env.database_url, options=f"-c search_path={env.schema}")
    return dataclasses.replace(env, database_url=url)


def set_environment(monkeypatch: pytest.MonkeyPatch, env: Env, **extra: str) -> None:
    """These ``BRIDGE_*`` settings and no others, as a deployment sets them."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") and not name.startswith(("BRIDGE_TEST_", "BRIDGE_PG_")):
            monkeypatch.delenv(name)
    settings = {
        "BRIDGE_DATABASE__URL": env.database_url,
        "BRIDGE_DATABASE__SCHEMA_NAME": env.schema,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": env.bootstrap,
        "BRIDGE_TOPIC_PREFIX": env.prefix,
        **extra,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


@contextlib.contextmanager
def django_on(env: Env) -> Iterator[None]:
    """Django configured on the test database, its connections in the test's schema."""
    configure_django(env.database_url)
    from django.db import connections

    settings_dict = connections["default"].settings_dict  # shared by every thread's connection
    saved = settings_dict.get("OPTIONS", {})
    connections["default"].close()
    settings_dict["OPTIONS"] = {**saved, "options": f"-c search_path={env.schema}"}
    try:
        yield
    finally:
        connections["default"].close()
        settings_dict["OPTIONS"] = saved


@functools.cache
def django_models() -> tuple[Any, Any]:
    """The reader's Django models ``Order`` and ``LedgerEntry`` (made once: Django registers each)."""
    from django.db import models
    from django.utils import timezone

    def model(name: str, table: str, **fields: Any) -> Any:
        meta = type("Meta", (), {"app_label": "django_app", "db_table": table, "managed": False})
        return type(name, (models.Model,), {"__module__": "support.django_app.models", "Meta": meta, **fields})

    order = model(
        "ReadmeOrder",
        "orders",
        id=models.TextField(primary_key=True),
        total_cents=models.IntegerField(),
        placed_at=models.DateTimeField(default=timezone.now),
    )
    ledger_entry = model(
        "ReadmeLedgerEntry",
        "credit_ledger",
        event_id=models.TextField(primary_key=True),
        person_id=models.TextField(),
        credits=models.IntegerField(),
        reason_code=models.TextField(),
        released_at=models.DateTimeField(),
    )
    return order, ledger_entry


def sqlalchemy_models() -> tuple[Any, Any]:
    """The reader's SQLAlchemy mapped classes ``Order`` and ``LedgerEntry``."""
    from sqlalchemy import DateTime, Integer, String
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    # Without Mapped[...] annotations: postponed annotations of classes made in a function are
    # strings SQLAlchemy cannot resolve.
    class Order(Base):
        __tablename__ = "orders"
        id = mapped_column(String, primary_key=True)
        total_cents = mapped_column(Integer, nullable=False)
        placed_at = mapped_column(DateTime(timezone=True), nullable=False)

    class LedgerEntry(Base):
        __tablename__ = "credit_ledger"
        event_id = mapped_column(String, primary_key=True)
        person_id = mapped_column(String, nullable=False)
        credits = mapped_column(Integer, nullable=False)
        reason_code = mapped_column(String, nullable=False)
        released_at = mapped_column(DateTime(timezone=True), nullable=False)

    return Order, LedgerEntry


# --- Adopting bridge: emit ------------------------------------------------------------------------


@pytest.fixture
def acme(relay_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """The contracts ``bridge init acme --domain orders --domain billing`` makes, an ``orders``
    table beside the outbox, and the settings of a process that emits as ``orders``."""
    scaffold(tmp_path, Scaffold(("orders", "billing"), topic_prefix=relay_env.prefix))
    with psycopg.connect(relay_env.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.orders (id text PRIMARY KEY, total_cents int NOT NULL, placed_at timestamptz NOT NULL)"
            ).format(sql.Identifier(relay_env.schema))
        )
    env = with_search_path(relay_env)
    set_environment(monkeypatch, env, BRIDGE_PRODUCER="orders", BRIDGE_CONTRACTS_PATH=str(tmp_path / "contracts"))
    return env


def orders(env: Env) -> list[tuple[str, int]]:
    with psycopg.connect(env.database_url) as conn:
        return conn.execute("SELECT id, total_cents FROM orders ORDER BY id").fetchall()


def outbox_events(env: Env) -> list[dict[str, Any]]:
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute("SELECT value FROM outbox ORDER BY id").fetchall()
    return [json.loads(value) for (value,) in rows]


def assert_emitted(env: Env, order_id: str, total_cents: int) -> None:
    assert orders(env) == [(order_id, total_cents)]  # the order committed…
    (event,) = outbox_events(env)  # …and its event, in the same transaction
    assert (event["event_type"], event["schema_version"], event["producer"]) == ("order.placed", 1, "orders")
    assert (event["subject"], event["tenant_id"]) == (order_id, "acme")
    assert event["payload"]["order_id"] == order_id
    assert event["payload"]["total_cents"] == total_cents


def test_emit_from_sqlalchemy(acme: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # The application's Engine, on the test database (its connections in the test's schema).
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(acme.database_url))
    order, _ = sqlalchemy_models()
    try:
        run_snippet("emit-sqlalchemy", monkeypatch, **{"shop.db": {"engine": engine}, "shop.models": {"Order": order}})
    finally:
        engine.dispose()
    assert_emitted(acme, "ord_1042", 4200)


def test_emit_from_django(acme: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with django_on(acme):
        order, _ = django_models()
        run_snippet("emit-django", monkeypatch, **{"shop.models": {"Order": order}})
    assert_emitted(acme, "ord_1043", 1990)


# --- Consumers: the same ledger in each handler shape ------------------------------------------------


@pytest.fixture
def ledger(relay_env: Env, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, list[Envelope]]:
    """The README's ``credit_ledger`` table, sales's topics, and credit.released v2 events on the
    topic (valid payloads from the schema), the first one delivered twice."""
    topic = relay_env.topic(EVENT)
    create_topics(relay_env.bootstrap, [topic], partitions=3)
    create_topics(relay_env.bootstrap, [f"{topic}.dlq.sales", replay_topic_name(relay_env.prefix, "sales")])
    env = with_search_path(relay_env)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(snippets()["ledger-table"])
    faker = PayloadFaker(CONTRACTS, seed=9)
    events = []
    for _ in range(EVENTS):
        payload = faker.payload(EVENT, 2, "tenant-1")
        events.append(envelope(EVENT, 2, subject=payload["credit_reservation_id"], payload=payload))
    produce(env.bootstrap, topic, [*events, events[0]])
    set_environment(monkeypatch, env, BRIDGE_CONSUMER__SESSION_TIMEOUT_MS="6000")
    return env, events


def ledger_rows(env: Env) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, person_id, credits, reason_code, released_at FROM credit_ledger"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def assert_in_ledger(env: Env, events: list[Envelope]) -> None:
    rows = ledger_rows(env)
    assert set(rows) == {e.event_id for e in events}
    for event in events:
        p = event.payload
        expected = (p["person_id"], p["released_credits"], p["reason_code"], parse_timestamp(p["released_at"]))
        assert rows[event.event_id] == expected


def consume(env: Env, app: Any, events: list[Envelope]) -> None:
    """Run ``app`` until every delivery (the events and one redelivery) is handled, then check
    that each event was applied once and nothing was dead-lettered."""
    assert isinstance(app, ConsumerApp)
    with consumer_thread(env, app) as runner:
        wait_until(lambda: runner.applied + runner.duplicates == len(events) + 1, message="every delivery")
    assert (runner.applied, runner.duplicates, runner.dead_lettered) == (len(events), 1, 0)
    assert_in_ledger(env, events)


def test_a_per_event_handler(ledger: tuple[Env, list[Envelope]], monkeypatch: pytest.MonkeyPatch) -> None:
    env, events = ledger
    consume(env, run_snippet("consumer-handler", monkeypatch)["app"], events)


def test_the_bulk_path(ledger: tuple[Env, list[Envelope]], monkeypatch: pytest.MonkeyPatch) -> None:
    env, events = ledger
    app = run_snippet("consumer-rows", monkeypatch)["app"]
    assert app.resolve_rows(EVENT, 2) is not None  # the rows function, not a handler
    consume(env, app, events)


def test_async_handlers_in_the_service_event_loop(
    ledger: tuple[Env, list[Envelope]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snippet's ``lifespan`` as FastAPI would run it: the consumer works in this event loop
    while the service awaits other things, and stops when the lifespan ends."""
    env, events = ledger
    namespace = run_snippet("consumer-async", monkeypatch)
    assert namespace["app"].is_async
    lifespan = namespace["lifespan"]

    async def service() -> None:
        async with lifespan(None):
            for _ in range(600):
                if len(await asyncio.to_thread(ledger_rows, env)) == len(events):
                    break
                await asyncio.sleep(0.1)

    asyncio.run(service())
    assert_in_ledger(env, events)


def test_an_orm_handler_with_sqlalchemy(ledger: tuple[Env, list[Envelope]], monkeypatch: pytest.MonkeyPatch) -> None:
    env, events = ledger
    _, ledger_entry = sqlalchemy_models()
    app = run_snippet("consumer-sqlalchemy", monkeypatch, **{"sales.models": {"LedgerEntry": ledger_entry}})["app"]
    consume(env, app, events)


def test_an_orm_handler_with_django(ledger: tuple[Env, list[Envelope]], monkeypatch: pytest.MonkeyPatch) -> None:
    env, events = ledger
    with django_on(env):
        _, ledger_entry = django_models()
        app = run_snippet("consumer-django", monkeypatch, **{"sales.models": {"LedgerEntry": ledger_entry}})["app"]
        consume(env, app, events)
