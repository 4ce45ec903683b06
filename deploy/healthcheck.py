"""Container health check: GET /healthz of the service that this container serves.

The image's HEALTHCHECK runs it. It reads the container's command line (PID 1) to learn
which service runs and on which port (``--port N``, else ``LEADSTREAM_<SERVICE>_PORT``,
else the service's default port). A container that runs a one-shot command (migrate,
topics create) has nothing to check and is healthy.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path


def service_port(argv: list[str]) -> int | None:
    """The port ``leadstream serve SERVICE [--port N]`` listens on, or None for other commands."""
    if "serve" not in argv:
        return None
    rest = argv[argv.index("serve") + 1:]
    for i, arg in enumerate(rest):
        if arg == "--port" and i + 1 < len(rest):
            return int(rest[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    service = next((a for a in rest if not a.startswith("-")), "capture")
    from leadstream.registry import port_of
    from shared.settings import Settings

    return port_of(Settings(), service)


def main() -> int:
    try:
        argv = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        argv = sys.argv[1:]
    port = service_port([a for a in argv if a])
    if port is None:
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
