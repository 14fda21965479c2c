"""How long a SIGKILLed consumer's partitions take to reach the rest of its group, per setting.

``python -m chaos.failover [classic|classic-45s|kip848|kip848-10s] [kills]`` (``tests`` on PYTHONPATH;
run it under the suite lock). Each mode runs the chaos suite's services, two relays, the emitters
(100 events/s) and a group of three ``bridge consume`` processes; it first watches 30 s of normal
load (any rebalance there is an extra one), then SIGKILLs a member ``kills`` times (default 3),
each time measuring when the others were assigned its partitions (their logs) and when they applied
records of them (the database), restarting it and letting the group settle. Then every guarantee
is checked as in the chaos run. Prints one ``FAILOVER_RESULT {...}`` line.

- ``classic``: bridge's defaults, the classic protocol with session.timeout.ms=10000 and
  heartbeat.interval.ms=1000;
- ``classic-45s``: librdkafka's own defaults (45000/3000), as bridge had before issue 15;
- ``kip848``: ``group.protocol=consumer`` (KIP-848) with the broker's defaults
  (group.consumer.session.timeout.ms=45000, heartbeat 5000);
- ``kip848-10s``: KIP-848 with the broker set to a 10 s session and a 1 s heartbeat.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from chaos.driver import ChaosConfig, ChaosRun

MODES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "classic": ({}, {}),
    "classic-45s": (
        {},
        {"BRIDGE_CONSUMER__SESSION_TIMEOUT_MS": "45000", "BRIDGE_CONSUMER__HEARTBEAT_INTERVAL_MS": "3000"},
    ),
    "kip848": ({}, {"BRIDGE_KAFKA__OPTIONS": json.dumps({"group.protocol": "consumer"})}),
    "kip848-10s": (
        {
            "group.consumer.min.session.timeout.ms": "6000",
            "group.consumer.session.timeout.ms": "10000",
            "group.consumer.min.heartbeat.interval.ms": "1000",
            "group.consumer.heartbeat.interval.ms": "1000",
        },
        {"BRIDGE_KAFKA__OPTIONS": json.dumps({"group.protocol": "consumer"})},
    ),
}


def measure(mode: str, kills: int = 3) -> dict[str, object]:
    broker, consumers = MODES[mode]
    config = ChaosConfig(
        events=6000, seconds=60, partitions_faults=False, broker_settings=broker, consumer_env=consumers
    )
    run = ChaosRun(config)
    started = time.monotonic()
    try:
        run.start_services()
        run.start_consumers()
        run.start_relays()
        run.start_emitters()
        run.quiet_window(30.0)
        for index in range(kills):
            run.consumer_kill(f"consumer_{index % 3 + 1}")
        run.quiet_window(10.0)
        run.stop_file.touch()
        run.drain()
        run.stop_processes()
        run.check()
    finally:
        run.close()
    failovers = run.figures.failovers()
    reassigned = [f.get("reassigned_s") for f in failovers]
    applied = [f.get("applied_by_others_s") for f in failovers]
    counts = run.figures.counts
    return {
        "mode": mode,
        "reassigned_s": reassigned,
        "applied_by_others_s": applied,
        "reassigned_median_s": statistics.median([r for r in reassigned if r is not None] or [0]),
        "rebalances": counts.get("rebalances"),
        "rebalances_under_normal_load": counts.get("rebalances_under_normal_load"),
        "commit_to_applied_p50_s": counts.get("commit_to_applied_p50_s"),
        "commit_to_applied_p99_s": counts.get("commit_to_applied_p99_s"),
        "violations": run.figures.violations,
        "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "classic"
    kills = int(argv[1]) if len(argv) > 1 else 3
    result = measure(mode, kills)
    print("FAILOVER_RESULT " + json.dumps(result), flush=True)
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
