"""Microseconds per validation of a realistic envelope with its payload (credit.released v2).

Compares the validator bridge ships (jsonschema-rs, compiled and cached by ``Contracts``) with plain
jsonschema (its compiled Draft202012Validator with a format checker, the fair baseline) and with
one-shot ``jsonschema.validate`` (what naive code does). Also times an invalid document, where every
violation is collected. Prints a table, then one JSON line: ``{"bench": "validate", "ratio": …}``
where ratio = plain jsonschema time / shipped time (higher is better).

    python bench/validate.py [--iterations N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json

import _common
import jsonschema

from bridge.contracts import Contracts
from bridge.errors import ValidationError

ENVELOPE = {
    "event_id": "evt_0190f5c2-8a41-7d3e-9b2a-5c6d7e8f9a0b",
    "event_type": "credit.released",
    "schema_version": 2,
    "producer": "revenue",
    "tenant_id": "tnt_acme_music",
    "subject": "crr_0190f5c2-8a41-7d3e-9b2a-5c6d7e8f9a0c",
    "occurred_at": "2026-06-03T14:05:09.123456Z",
    "recorded_at": "2026-06-03T14:05:09.130211Z",
    "correlation_id": "evt_0190f5c2-7000-7d3e-9b2a-5c6d7e8f9a00",
    "causation_id": None,
    "payload": {
        "tenant_id": "tnt_acme_music",
        "credit_reservation_id": "crr_0190f5c2-8a41-7d3e-9b2a-5c6d7e8f9a0c",
        "credit_account_id": "cra_0190f5c2-1111-7d3e-9b2a-5c6d7e8f9a0d",
        "person_id": "per_0190f5c2-2222-7d3e-9b2a-5c6d7e8f9a0e",
        "lesson_id": "les_0190f5c2-3333-7d3e-9b2a-5c6d7e8f9a0f",
        "prior_state": "locked",
        "released_credits": 1,
        "released_by": "op_maria",
        "reason_code": "operator_customer_request",
        "released_at": "2026-06-03T14:05:09.120000Z",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()

    contracts = Contracts.load(engine="rust")
    registry = contracts.registry
    envelope_schema = json.loads(registry.envelope_schema_file.read_text())
    payload_schema = json.loads(registry.schema_file(registry.lookup("credit.released", 2)).read_text())

    contracts.validate_envelope(ENVELOPE)  # fail loudly if the sample is not valid
    checker = jsonschema.FormatChecker()
    plain_envelope = jsonschema.Draft202012Validator(envelope_schema, format_checker=checker)
    plain_payload = jsonschema.Draft202012Validator(payload_schema, format_checker=checker)

    def shipped() -> None:
        contracts.validate_envelope(ENVELOPE)

    def plain() -> None:
        plain_envelope.validate(ENVELOPE)
        plain_payload.validate(ENVELOPE["payload"])

    def one_shot() -> None:
        jsonschema.validate(ENVELOPE, envelope_schema, format_checker=checker)
        jsonschema.validate(ENVELOPE["payload"], payload_schema, format_checker=checker)

    invalid = copy.deepcopy(ENVELOPE)
    invalid["producer"] = "finance"
    invalid["payload"]["released_credits"] = 3
    invalid["payload"]["released_by"] = None
    del invalid["payload"]["prior_state"]

    def shipped_invalid() -> None:
        with contextlib.suppress(ValidationError):
            contracts.validate_envelope(invalid)

    def plain_invalid() -> None:
        list(plain_envelope.iter_errors(invalid))
        list(plain_payload.iter_errors(invalid["payload"]))

    n = args.iterations
    results = {
        "shipped (jsonschema-rs)": _common.time_calls(shipped, n),
        "plain jsonschema (compiled)": _common.time_calls(plain, max(1000, n // 10)),
        "jsonschema.validate (one-shot)": _common.time_calls(one_shot, max(200, n // 100), warmup=20),
        "shipped, invalid doc (all violations)": _common.time_calls(shipped_invalid, n),
        "plain jsonschema, invalid doc": _common.time_calls(plain_invalid, max(1000, n // 10)),
    }
    print(f"{'validator':42} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9}")
    for name, r in results.items():
        print(f"{name:42} {r['mean_us']:9.1f} {r['p50_us']:9.1f} {r['p99_us']:9.1f}")
    shipped_r = results["shipped (jsonschema-rs)"]
    plain_r = results["plain jsonschema (compiled)"]
    _common.report(
        "validate",
        {
            "ratio": round(plain_r["mean_us"] / shipped_r["mean_us"], 2),
            "shipped_us": round(shipped_r["mean_us"], 2),
            "shipped_p50_us": round(shipped_r["p50_us"], 2),
            "shipped_p99_us": round(shipped_r["p99_us"], 2),
            "plain_us": round(plain_r["mean_us"], 2),
            "plain_p50_us": round(plain_r["p50_us"], 2),
            "plain_p99_us": round(plain_r["p99_us"], 2),
            "one_shot_us": round(results["jsonschema.validate (one-shot)"]["mean_us"], 2),
            "invalid_ratio": round(
                results["plain jsonschema, invalid doc"]["mean_us"]
                / results["shipped, invalid doc (all violations)"]["mean_us"],
                2,
            ),
            "peak_rss_mb": round(_common.peak_rss_mb(), 1),
            "iterations": n,
        },
    )


if __name__ == "__main__":
    main()
