"""Mutation testing of bridge's pure core with mutmut (``make mutation``).

Runs mutmut over the functions below with the unit tests only (pyproject.toml, ``[tool.mutmut]``),
then prints the score of each module: killed / (killed + survived + timeouts). Every surviving
mutant must be listed, with why it survives, in ``tests/mutation/SURVIVORS.md``; the run fails
when a module scores below 90 % or a survivor is not listed there.

    python tests/mutation/run.py                 # every module (about an hour on 2 cores; mutmut
                                                 # keeps results in mutants/ and re-runs only what changed)
    MUTATION_CHANGED=1 python tests/mutation/run.py   # only modules changed since MUTATION_BASE
                                                 # (default: origin/main if it exists, else HEAD~1),
                                                 # working-tree changes included
    python tests/mutation/run.py --report        # the scores of the last run, without running
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.90

#: module file → the mutant names (fnmatch) that count: the pure core, and the pure helpers of
#: otherwise impure modules (the outbox store's multirange, the consumer's error policy).
SCOPE: dict[str, list[str]] = {
    "bridge/envelope.py": ["bridge.envelope.*"],
    "bridge/ids.py": ["bridge.ids.*"],
    "bridge/contracts/registry.py": ["bridge.contracts.registry.*"],
    "bridge/contracts/validation.py": ["bridge.contracts.validation.*"],
    "bridge/contracts/compatibility.py": ["bridge.contracts.compatibility.*"],
    "bridge/signing.py": ["bridge.signing.*"],
    "bridge/topics/naming.py": ["bridge.topics.naming.*"],
    "bridge/avro.py": ["bridge.avro.*"],
    "bridge/backoff.py": ["bridge.backoff.*"],
    "bridge/outbox/source.py": ["bridge.outbox.source.x_id_ranges__mutmut_*"],
    "bridge/outbox/store.py": ["bridge.outbox.store.x_multirange__mutmut_*"],
    "bridge/config.py": ["bridge.config.x\u01c1ErrorPolicy\u01c1*"],
}

#: mutmut's exit codes. A mutant no test runs ("no tests") is a mutant no test detects: it counts as survived.
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "survived",
    33: "survived",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
}
SURVIVORS = Path(__file__).with_name("SURVIVORS.md")


def changed_modules() -> list[str]:
    base = os.environ.get("MUTATION_BASE")
    if not base:
        has_origin = (
            subprocess.run(
                ["git", "rev-parse", "--verify", "--quiet", "origin/main"], cwd=ROOT, capture_output=True
            ).returncode
            == 0
        )
        base = "origin/main" if has_origin else "HEAD~1"
    names = subprocess.run(
        ["git", "diff", "--name-only", base, "--", *SCOPE], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [m for m in SCOPE if m in names]


def run(modules: list[str]) -> int:
    patterns = [p for m in modules for p in SCOPE[m]]
    if not patterns:
        print("mutation: no module of the pure core changed; nothing to do")
        return 0
    print(f"mutation: mutmut over {', '.join(modules)}", flush=True)
    return subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", *patterns], cwd=ROOT).returncode


def results() -> dict[str, str]:
    """mutant name → status, from mutmut's files under mutants/."""
    found: dict[str, str] = {}
    for meta in (ROOT / "mutants").rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = "not checked" if code is None else STATUS.get(code, f"exit {code}")
    return found


def listed_survivors() -> set[str]:
    if not SURVIVORS.exists():
        return set()
    return set(re.findall(r"`(bridge\.[^`]+__mutmut_\d+)`", SURVIVORS.read_text()))


def report(modules: list[str]) -> int:
    found = results()
    listed = listed_survivors()
    failed = False
    print(f"{'module':40} {'killed':>7} {'survived':>9} {'timeout':>8} {'unchecked':>10} {'score':>7}")
    survivors: list[str] = []
    for module in modules:
        mine = {n: s for n, s in found.items() if any(fnmatch.fnmatch(n, p) for p in SCOPE[module])}
        counts = Counter(mine.values())
        # A timeout is a mutant the tests noticed (it made them hang): counted as detected.
        detected = counts["killed"] + counts["timeout"]
        judged = detected + counts["survived"]
        unchecked = len(mine) - judged
        shown = f"{detected / judged:>7.1%}" if judged else "    n/a"
        print(
            f"{module:40} {counts['killed']:>7} {counts['survived']:>9} {counts['timeout']:>8} {unchecked:>10} {shown}"
        )
        if not judged or detected / judged < THRESHOLD or unchecked:
            failed = True
        survivors += sorted(n for n, s in mine.items() if s == "survived")
    unlisted = [n for n in survivors if n not in listed]
    if unlisted:
        print(f"\n{len(unlisted)} surviving mutant(s) not justified in {SURVIVORS.relative_to(ROOT)}:")
        for name in unlisted:
            print(f"  {name}")
        failed = True
    if failed:
        print(
            f"\nmutation: FAILED (each module needs {THRESHOLD:.0%} with every mutant checked, "
            "and every survivor a justification)"
        )
        return 1
    print("\nmutation: OK")
    return 0


def main(argv: list[str]) -> int:
    modules = changed_modules() if os.environ.get("MUTATION_CHANGED") == "1" else list(SCOPE)
    if "--report" not in argv:
        code = run(modules)
        if code not in (0,):
            print(f"mutation: mutmut exited {code}")
            return code
    return report(modules)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
