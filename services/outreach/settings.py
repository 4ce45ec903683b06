"""The outreach service's settings: the spine's (outreach reads no setting of its own yet;
one it alone reads goes here, and in docs/operations.md's configuration table)."""

from __future__ import annotations

from shared.settings import Settings


class OutreachSettings(Settings):
    pass
