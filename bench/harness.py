"""Processes and measurements shared by the benchmark sections."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.broker import EmbeddedBroker, free_port
from tests.support import ROOT, ServiceProcess


@dataclass
class Row:
    section: str
    metric: str
    value: float
    unit: str
    ratio: float | None = None
    target: str = ""

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}" if self.ratio >= 0.1 else f"{self.ratio:.4f}"
        value = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:,.2f}"
        return [self.section, self.metric, f"{value} {self.unit}", ratio, self.target]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stack:
    """A broker and service processes on free ports, with SQLite files in a temp dir."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="leadstream-bench-"))
        self.broker = EmbeddedBroker(port=free_port())
        self.services: dict[str, ServiceProcess] = {}
        self.env: dict[str, str] = {}

    def start_broker(self) -> None:
        self.broker.start()
        self.env = {
            "LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "LEADSTREAM_DATA_DIR": str(self.tmp),
            "LEADSTREAM_CAPTURE_RATE_LIMIT": "off",
            "LEADSTREAM_CAPTURE_FORM_RATE_LIMIT": "off",
            "LEADSTREAM_API_RATE_LIMIT": "off",
            "LEADSTREAM_LOG_LEVEL": "WARNING",
        }
        subprocess.run([sys.executable, "-m", "leadstream.cli", "migrate"], env={**os.environ, **self.env}, cwd=ROOT,
                       check=True, capture_output=True)

    def start(self, service: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(service, {**self.env, **env}, self.tmp)
        proc.start()
        self.services[service] = proc
        return proc

    def start_workers(self, n: int, **env: str) -> list[ServiceProcess]:
        """``n`` qualification workers in one group, named ``qualification-0`` …"""
        workers = []
        for i in range(n):
            workers.append(self.start("qualification", **env))
            self.services[f"qualification-{i}"] = self.services.pop("qualification")
        return workers

    def stop(self) -> None:
        for proc in self.services.values():
            proc.stop()
        self.broker.stop()


class BaselineProcess:
    """uvicorn serving bench.baseline:app, configured like the services."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = open(tmp / "baseline.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.baseline:app", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/docs", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("baseline did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
