"""Qualification's CPU against another checkout's, measured in pairs: both run
``bench.qualification_cpu`` at the same time, one per core, so whatever else slows the
machine slows both alike. A pair's ratio (this checkout's CPU seconds over the other's)
varies by about ±4 % here, where two runs one after the other vary by ±15 %.

    .venv/bin/python -m bench.paired OTHER_CHECKOUT [rounds=3] [events=20000] [sqlite|postgres]

On PostgreSQL only the worker process is counted, not the server.

``OTHER_CHECKOUT`` is a worktree with its own ``.venv`` (``make install``) and
``bench/qualification_cpu.py`` (copy this checkout's into an older one). Prints each pair
and the median ratio.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _start(checkout: Path, events: int, backend: str) -> subprocess.Popen:
    return subprocess.Popen([str(checkout / ".venv/bin/python"), "-m", "bench.qualification_cpu", str(events), "1000",
                             backend], cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cpu(process: subprocess.Popen) -> float:
    out, _ = process.communicate()
    found = re.search(r"cpu=([0-9.]+)s", out)
    if process.returncode or found is None:
        raise SystemExit(f"bench.qualification_cpu failed in {process.args}:\n{out[-2000:]}")
    return float(found.group(1))


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    other = Path(argv[0]).resolve()
    rounds = int(argv[1]) if len(argv) > 1 else 3
    events = int(argv[2]) if len(argv) > 2 else 20000
    backend = argv[3] if len(argv) > 3 else "sqlite"
    ratios = []
    for n in range(1, rounds + 1):
        ours, theirs = _start(HERE, events, backend), _start(other, events, backend)
        a, b = _cpu(ours), _cpu(theirs)
        ratios.append(a / b)
        print(f"pair {n}: this {a:.2f} s, other {b:.2f} s, ratio {a / b:.3f}", flush=True)
    print(f"median ratio {statistics.median(ratios):.3f} over {rounds} pairs ({events} events, {backend})")


if __name__ == "__main__":
    main(sys.argv[1:])
