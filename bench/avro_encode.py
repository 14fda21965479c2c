"""Avro single-object encoding against JSON for the same envelopes: events/s and bytes per event.

A realistic mix of every registered (event_type, version), with payloads generated from the
schemas. JSON is ``Envelope.to_json()`` (what the outbox stores); Avro is ``AvroCodec.encode`` of the
same envelope document. Decoding is timed too (JSON: strict decode; Avro: single-object decode to the
JSON document). ratio = Avro encode events/s / JSON encode events/s.

Prints a table, then one JSON line: {"bench": "avro_encode", "ratio": …}.

    python bench/avro_encode.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import _common

from bridge.avro import AvroCodec
from bridge.contracts import Contracts
from bridge.envelope import Envelope, decode_json_object
from bridge.fakes import PayloadFaker
from bridge.ids import new_event_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    contracts = Contracts.load()
    codec = AvroCodec(contracts.registry)
    faker = PayloadFaker(contracts, seed=3)
    pairs = sorted((t, v) for t, e in contracts.registry.events.items() for v in e.versions)
    now = datetime.now(UTC)
    envelopes = []
    for i in range(args.events):
        event_type, version = pairs[i % len(pairs)]
        producer = contracts.registry.events[event_type].producer
        envelopes.append(
            Envelope(
                new_event_id(),
                event_type,
                version,
                producer,
                "tenant-1",
                f"sub-{i % 300}",
                now,
                now,
                faker.payload(event_type, version, "tenant-1"),
                f"corr-{i % 50}",
                None,
            )
        )
    documents = [json.loads(e.to_json()) for e in envelopes]

    def timed(function, items):
        samples = []
        start = time.perf_counter()
        for item in items:
            began = time.perf_counter_ns()
            function(item)
            samples.append(time.perf_counter_ns() - began)
        elapsed = time.perf_counter() - start
        samples.sort()
        return len(items) / elapsed, samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000

    json_bytes = [e.to_json() for e in envelopes]
    avro_bytes = [codec.encode(d) for d in documents]
    rows = {
        "JSON encode": timed(lambda e: e.to_json(), envelopes),
        "Avro encode": timed(codec.encode, documents),
        "JSON decode": timed(decode_json_object, json_bytes),
        "Avro decode": timed(codec.decode, avro_bytes),
    }
    json_size = sum(map(len, json_bytes)) / len(json_bytes)
    avro_size = sum(map(len, avro_bytes)) / len(avro_bytes)
    print(f"{args.events} envelopes over {len(pairs)} (type, version) pairs")
    print(f"{'':12} {'events/s':>10} {'p50 µs':>8} {'p99 µs':>8}")
    for name, (rate, p50, p99) in rows.items():
        print(f"{name:12} {rate:10.0f} {p50:8.1f} {p99:8.1f}")
    print(f"bytes per event: JSON {json_size:.0f}, Avro {avro_size:.0f} ({avro_size / json_size:.0%})")
    _common.report(
        "avro_encode",
        {
            "ratio": round(rows["Avro encode"][0] / rows["JSON encode"][0], 3),
            "avro_encode_per_s": round(rows["Avro encode"][0]),
            "json_encode_per_s": round(rows["JSON encode"][0]),
            "avro_decode_per_s": round(rows["Avro decode"][0]),
            "json_decode_per_s": round(rows["JSON decode"][0]),
            "avro_encode_p50_us": round(rows["Avro encode"][1], 1),
            "avro_encode_p99_us": round(rows["Avro encode"][2], 1),
            "json_bytes_per_event": round(json_size),
            "avro_bytes_per_event": round(avro_size),
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "events": args.events,
        },
    )


if __name__ == "__main__":
    main()
