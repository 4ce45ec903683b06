"""``leadstream run``'s exit code: a service that exits by itself (qualification refusing a bad
rules file) fails the whole run; Ctrl-C / SIGTERM is a clean stop. Real child processes,
not the stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from leadstream.cli import _stop_all, supervise


def _service(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def procs():  # noqa: ANN201
    started: dict[str, subprocess.Popen] = {}
    yield started
    _stop_all(started.values())


def test_a_service_that_exits_fails_the_run(procs, capsys):
    procs["capture"] = _service("import time; time.sleep(60)")
    procs["qualification"] = _service("raise SystemExit('qualification: channels.yaml:3: invalid channel rules')")
    assert supervise(procs) == 1
    assert "a service exited: qualification (exit code 1); stopping everything" in capsys.readouterr().err
    assert procs["capture"].poll() is None  # the caller stops the others


def test_a_signal_is_a_clean_stop(procs):
    procs["capture"] = _service("import time; time.sleep(60)")
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert supervise(procs) == 0
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back
