"""`make bench`: every figure measured in the same run, as ratios to baselines of that run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench import analytics, balance, capture, e2e, outreach, pipeline, qualification, qualification_pg, webhooks
from bench.harness import Row, Stack

SECTIONS = {
    "capture": capture.run,
    "outreach": outreach.run,
    "qualification": qualification.run,
    "qualification-pg": qualification_pg.run,
    "e2e": e2e.run,
    "e2e-pg": e2e.run_pg,
    "pipeline": pipeline.run,
    "webhooks": webhooks.run,
    "analytics": analytics.run,
    "balance": balance.run,
}


def machine_speed() -> float:
    """Milliseconds for a fixed piece of pure-Python work (best of 5): the same code on the
    same machine takes two to three times longer on some days, so absolute figures of two
    runs compare only together with this row."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def print_table(rows: list[Row]) -> None:
    header = ["section", "metric", "value", "ratio", "target"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for n, line in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def main(argv: list[str]) -> None:
    wanted = argv or list(SECTIONS)
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        sys.exit(f"unknown bench section(s): {', '.join(unknown)}; one of {', '.join(SECTIONS)}")
    stack = Stack()
    rows: list[Row] = []
    started = time.time()
    rows.append(
        Row("machine", "fixed pure-Python work before the run (lower is a faster machine)", machine_speed(), "ms")
    )
    try:
        stack.start_broker()
        for name in wanted:
            print(f"… {name}", file=sys.stderr, flush=True)
            rows += SECTIONS[name](stack)
    finally:
        stack.stop()
    rows.append(Row("machine", "the same work after the run", machine_speed(), "ms"))
    print_table(rows)
    out = Path("var/bench.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"measured_at": started, "rows": [r.__dict__ for r in rows]}, indent=2))
    print(f"\n(written to {out}; {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
