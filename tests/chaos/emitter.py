"""One emitting process of the chaos suite: ``python -m chaos.emitter`` (``tests`` on PYTHONPATH).

Each transaction is a domain write and its events, as an application would do it: for one to three
subjects (sorted, so concurrent emitters never deadlock), ``UPDATE subjects SET seq = seq + 1``
(the row lock serializes the subject across processes, so ``seq`` is commit order), ``emit_batch``
of ``coach.assigned`` with payload ``{"seq": n}``, and a row per event in ``writes``. A fraction of
the transactions is rolled back on purpose; their event ids are written to ``--log`` first. What
committed is what ``writes`` holds afterwards (a commit interrupted by a database restart may have
happened or not). Database outages are waited out; the pace (``--rate``) catches up afterwards.
It stops when ``--stop-file`` exists (or after ``--events``, when given).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

from bridge.contracts import Contracts
from bridge.outbox import EventSpec, Outbox

EVENT_TYPE = "coach.assigned"
PRODUCER = "delivery"


def emit_transaction(
    conn: psycopg.Connection[Any], outbox: Outbox, schema: str, subjects: list[str], extra: dict[str, Any] | None = None
) -> list[str]:
    """Bump each subject's seq and emit one event per subject, in the caller's open transaction;
    return the event ids."""
    specs = []
    for subject in sorted(subjects):
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {}.subjects (subject, seq) VALUES (%s, 1) "
                "ON CONFLICT (subject) DO UPDATE SET seq = subjects.seq + 1 RETURNING seq"
            ).format(sql.Identifier(schema)),
            (subject,),
        ).fetchone()
        assert row is not None
        specs.append(EventSpec(EVENT_TYPE, 1, subject, "chaos", {"seq": row[0], **(extra or {})}))
    envelopes = outbox.emit_batch(conn, specs)
    with conn.cursor() as cursor:
        cursor.executemany(
            sql.SQL("INSERT INTO {}.writes (event_id, subject, seq) VALUES (%s, %s, %s)").format(
                sql.Identifier(schema)
            ),
            [(e.event_id, e.subject, e.payload["seq"]) for e in envelopes],
        )
    return [e.event_id for e in envelopes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--events", type=int, default=0, help="stop after this many (0: only on --stop-file)")
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--rollback", type=float, default=0.05, help="fraction of transactions rolled back")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    pool = [f"s-{i:04d}" for i in range(args.subjects)]
    outbox = Outbox(Contracts.load(), PRODUCER, schema=args.schema)
    counts = {"committed": 0, "rolled_back": 0, "uncertain": 0, "failed": 0, "reconnects": 0}
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - one line per transaction, flushed as written
    conn: psycopg.Connection[Any] | None = None
    started = time.monotonic()
    emitted = 0
    while (args.events == 0 or emitted < args.events) and not os.path.exists(args.stop_file):
        due = started + emitted / args.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(args.url, connect_timeout=5)
                counts["reconnects"] += 1
            subjects = rng.sample(pool, rng.choice((1, 1, 2, 3)))
            ids = emit_transaction(conn, outbox, args.schema, subjects)
            if rng.random() < args.rollback:
                log.write(json.dumps({"rolled_back": ids}) + "\n")
                conn.rollback()
                counts["rolled_back"] += len(ids)
                continue
            try:
                conn.commit()
            except psycopg.OperationalError:
                # The commit may or may not have happened: the writes table says which.
                log.write(json.dumps({"uncertain": ids}) + "\n")
                counts["uncertain"] += len(ids)
                raise
            counts["committed"] += len(ids)
            emitted += len(ids)
        except psycopg.Error as exc:
            counts["failed"] += 1
            if conn is not None and not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()
            if isinstance(exc, psycopg.OperationalError) and conn is not None:
                conn.close()
            time.sleep(0.2)
    if conn is not None:
        conn.close()
    log.write(json.dumps({"done": counts}) + "\n")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
