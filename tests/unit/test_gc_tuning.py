"""A served process freezes its start-up heap once it has started (LEADSTREAM_GC_FREEZE);
apps built inside another process (the tests' own) leave its collector alone. Each case runs
in a fresh interpreter so this test process's collector is never touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

LIFESPAN = """
import asyncio, gc, types
from shared.web import create_service_app

class Runtime:
    settings = types.SimpleNamespace(gc_freeze={freeze})
    async def start(self): pass
    async def stop(self): pass

app = create_service_app(service="t", title="t", description="t", routers=[], runtime=Runtime(),
                         ready_checks=dict)
before = gc.get_freeze_count(), gc.get_threshold()

async def main():
    async with app.router.lifespan_context(app):
        print(before == (gc.get_freeze_count(), gc.get_threshold()), gc.get_freeze_count() > 0, gc.get_threshold()[0])

asyncio.run(main())
"""


@pytest.mark.parametrize("freeze, expected", [(True, "False True 50000"), (False, "True False 700")])
def test_the_lifespan_tunes_the_collector_only_when_asked(freeze, expected):
    out = subprocess.run([sys.executable, "-c", LIFESPAN.format(freeze=freeze)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == expected


def test_tests_build_apps_that_leave_the_collector_alone():
    from tests.support import make_settings

    assert make_settings("127.0.0.1:1", ROOT / "var").gc_freeze is False
