"""A client that hangs up halfway through its body is not an error of ours (issue 26, item 11).

A real uvicorn server on a free port (``leadstream serve``) and a raw socket that sends the
headers and part of the declared body, then closes: the service logs it at debug, never as
``unhandled error`` with a traceback, so anonymous clients cannot flood the error log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from leadstream.registry import aupgrade
from tests.support import ROOT, ServiceProcess, eventually

pytestmark = pytest.mark.timeout(120)


def hang_up_mid_body(port: int, path: str, headers: dict[str, str], part: bytes) -> None:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 1000",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + part)


@pytest.fixture
async def services(broker, tmp_path):
    urls = {db: f"sqlite+aiosqlite:///{tmp_path / f'{db}.db'}" for db in ("capture", "outreach")}
    for db, url in urls.items():
        await aupgrade(db, url)
    env = {"LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "LEADSTREAM_DATA_DIR": str(tmp_path),
           "LEADSTREAM_CAPTURE_DATABASE_URL": urls["capture"], "LEADSTREAM_OUTREACH_DATABASE_URL": urls["outreach"],
           "LEADSTREAM_LOG_LEVEL": "DEBUG", "LEADSTREAM_LOG_JSON": "true"}
    created = subprocess.run(  # the console script, wherever the command's module lives
        [str(Path(sys.executable).parent / "leadstream"), "api-keys", "create", "--name", "t", "--scope", "outreach"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr[-3000:]
    env["api_key"] = created.stdout.strip()
    procs = [ServiceProcess(name, env, tmp_path) for name in ("capture", "outreach")]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def test_a_body_cut_short_is_logged_at_debug_not_as_an_error(services):
    capture, outreach = services
    json_body = {"Content-Type": "application/json"}
    cuts = [
        (capture, "/v1/leads", json_body, b'{"email": "ada@'),
        (capture, "/v1/forms/newsletter/submissions",
         {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://localhost:8080"}, b"email=ada%40"),
        (outreach, "/v1/prospects", json_body | {"Authorization": f"Bearer {outreach.env['api_key']}"},
         b'{"email": "grace@'),
    ]
    for proc, path, headers, part in cuts:
        hang_up_mid_body(proc.port, path, headers, part)

    def logged(proc: ServiceProcess) -> str:
        return proc.log_path.read_text()

    async def all_seen() -> bool:
        return "client disconnected" in logged(capture) and "client disconnected" in logged(outreach)

    await eventually(all_seen, timeout=30)
    for proc in (capture, outreach):
        assert httpx.get(f"{proc.url}/healthz").status_code == 200  # still serving
        log = logged(proc)
        assert "unhandled error" not in log and "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
        line = next(line for line in log.splitlines() if "client disconnected" in line)
        assert '"level": "debug"' in line and '"path": "/v1/' in line, line
