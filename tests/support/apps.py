"""coaching's test application in every handler shape bridge supports, with the same behaviour: each
applied ``coach.assigned`` becomes one row of ``<schema>.applied`` (event_id, subject, seq).

- ``sync``: a per-event handler (``conn.execute``), as :func:`support.consumer.counting_app`;
- ``async``: the same as ``async def`` on a ``psycopg.AsyncConnection``;
- ``bulk``: an ``@app.rows`` function (the rows of a batch are written with ``COPY``);
- ``sqlalchemy``: a handler writing a mapped class through :func:`bridge.consumer.orm.sqlalchemy_session`;
- ``django``: a handler saving a Django model (``connection="django"``).

Payload knobs, the same for all: ``{"fail_times": n}`` fails the first n attempts, ``{"decide":
"skip"|"dead"|"retry"}`` raises that decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bridge.consumer import ConsumerApp, ErrorPolicy
from bridge.envelope import Envelope
from support.consumer import APP_TYPE, counting_app, decide
from support.outbox import CONTRACTS

KINDS = ("sync", "async", "bulk", "sqlalchemy", "django")


def kind_app(
    schema: str,
    kind: str,
    *,
    policy: ErrorPolicy | None = None,
    failures: dict[str, int] | None = None,
    database_url: str | None = None,
) -> ConsumerApp:
    """coaching's app in handler shape ``kind`` (``django`` needs ``database_url``)."""
    failures = failures if failures is not None else {}
    if kind == "sync":
        return counting_app(schema, policy=policy, failures=failures)
    builders: dict[str, Callable[..., ConsumerApp]] = {
        "async": _async_app,
        "bulk": _bulk_app,
        "sqlalchemy": _sqlalchemy_app,
        "django": _django_app,
    }
    if kind == "django":
        assert database_url is not None
        configure_django(database_url)
    return builders[kind](schema, policy, failures)


def _insert(schema: str) -> sql.Composed:
    return sql.SQL("INSERT INTO {}.applied (event_id, subject, seq) VALUES (%s, %s, %s)").format(sql.Identifier(schema))


def _async_app(schema: str, policy: ErrorPolicy | None, failures: dict[str, int]) -> ConsumerApp:
    app = ConsumerApp("coaching", contracts=CONTRACTS, policy=policy)
    insert = _insert(schema)

    @app.handler(APP_TYPE)
    async def record(event: Envelope, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(insert, (event.event_id, event.subject, event.payload.get("seq")))
        decide(event, failures)

    return app


def _bulk_app(schema: str, policy: ErrorPolicy | None, failures: dict[str, int]) -> ConsumerApp:
    app = ConsumerApp("coaching", contracts=CONTRACTS, policy=policy)

    @app.rows(APP_TYPE, into=f"{schema}.applied", columns=("event_id", "subject", "seq"))
    def row(event: Envelope) -> tuple[str, str, int | None]:
        decide(event, failures)
        return (event.event_id, event.subject, event.payload.get("seq"))

    return app


def applied_model(schema: str) -> Any:
    """A SQLAlchemy mapped class for ``<schema>.applied`` (one registry per schema)."""
    from sqlalchemy import BigInteger, Integer, String
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    class Applied(Base):
        __tablename__ = "applied"
        __table_args__ = {"schema": schema}  # noqa: RUF012 - SQLAlchemy's declarative attribute
        # Without Mapped[...] annotations: they would be strings here (postponed annotations of a
        # class made inside a function), which SQLAlchemy cannot resolve.
        n = mapped_column(BigInteger, primary_key=True, autoincrement=True)
        event_id = mapped_column(String)
        subject = mapped_column(String)
        seq = mapped_column(Integer, nullable=True)

    return Applied


def _sqlalchemy_app(schema: str, policy: ErrorPolicy | None, failures: dict[str, int]) -> ConsumerApp:
    from bridge.consumer.orm import sqlalchemy_session

    applied_row = applied_model(schema)
    app = ConsumerApp("coaching", contracts=CONTRACTS, policy=policy, pipeline=False)

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: psycopg.Connection[Any]) -> None:
        with sqlalchemy_session(conn) as session:
            session.add(applied_row(event_id=event.event_id, subject=event.subject, seq=event.payload.get("seq")))
            session.flush()  # the ORM reads the generated key back: no pipeline mode
        decide(event, failures)

    return app


def configure_django(database_url: str) -> None:
    """Django configured on the test database, with the ``support.django_app`` models."""
    import django
    from django.conf import settings

    info = psycopg.conninfo.conninfo_to_dict(database_url)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": info["dbname"],
        "USER": info["user"],
        "HOST": info["host"],
        "PORT": info["port"],
    }
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, USE_TZ=True, INSTALLED_APPS=["support.django_app"])
        django.setup()
    else:
        from django.db import connections

        connections["default"].close()
        connections["default"].settings_dict.update(database)


def _django_app(schema: str, policy: ErrorPolicy | None, failures: dict[str, int]) -> ConsumerApp:
    from support.django_app.models import applied_model_for

    model = applied_model_for(schema)
    app = ConsumerApp("coaching", contracts=CONTRACTS, policy=policy, connection="django")

    @app.handler(APP_TYPE)
    def record(event: Envelope, conn: Any) -> None:
        model.objects.create(event_id=event.event_id, subject=event.subject, seq=event.payload.get("seq"))
        decide(event, failures)

    return app
