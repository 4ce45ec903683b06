"""The motion balance rollups (``balance_days``, ``balance_days_to_sql``, ``balance_effort``):
what one contact contributes to them, and the batched upsert of a transaction's changes.

Every writer of a contact's row or its opportunity's stage and amount keeps them in the same
transaction, as a delta: the contribution of the row as it was read is taken away and the
contribution of the row as written is added (``Deltas``). Qualification does it when its
records are written back (services/qualification/rollups.py), the pipeline service when
sales move an opportunity. A contact contributes to one cohort row: its first-touch day,
entry motion, motion and first-touch channel; a late touch that moves its first touch moves
its contribution with it. Facts (form submissions and sales touches) add to the effort table
by the day they occurred; they never change.

Upserts add to the stored counts (``INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n``,
one executemany per table, keys in order so concurrent writers lock rows in the same order).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import BalanceDay, BalanceDaysToSql, BalanceEffort
from shared.db import add_many
from shared.times import as_utc

DAYS = BalanceDay.__table__
DAYS_TO_SQL = BalanceDaysToSql.__table__
EFFORT = BalanceEffort.__table__
OPEN_OR_WON = ("sql", "opportunity", "customer")
GOOD_FIT = ("A", "B")
LEAD_CAPTURED = "io.leadstream.lead.captured.v1"
TOUCH_RECORDED = "io.leadstream.touch.recorded.v1"
# what a contact's contribution reads of its row
CONTACT_FIELDS = ("first_touch_at", "created_at", "first_touch_motion", "motion", "first_touch_channel", "fit_grade",
                  "sql_at", "opportunity_at", "customer_at")
_COUNTERS = ("entrants", "fit_ab", "sql", "won", "pipeline_amount", "won_amount")


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one contact adds to the rollups: one cohort row (``key``), its counters, and the
    whole days from first touch to ``sql`` (``None`` before ``sql``)."""

    key: tuple[date, str, str, str]  # first-touch day, entry motion, motion, first-touch channel ('' none)
    counters: tuple[int, int, int, int, Decimal, Decimal]  # in _COUNTERS order
    days_to_sql: int | None


def contribution(contact: Any, opportunity_stage: str | None = None,
                 opportunity_amount: Decimal | None = None) -> Contribution:
    """A contact's contribution (``contact``: anything with the ``CONTACT_FIELDS`` as attributes).

    The cohort day is the first touch's (the first fact's time where no touch was kept), as
    the sources answer counts it; the entry motion is the first touch's motion (how the
    contact entered), ``motion`` the contact's (``blended`` when both motions touched it
    before qualification). ``sql`` counts a contact that reached ``sql`` or a later stage;
    amounts come from its opportunity: pipeline while open or won, won when won.
    """
    first = as_utc(contact.first_touch_at or contact.created_at)
    motion = contact.motion
    entry = contact.first_touch_motion or (motion if motion != "blended" else "inbound")
    reached_sql = contact.sql_at is not None or contact.opportunity_at is not None or contact.customer_at is not None
    amount = Decimal(0) if opportunity_amount is None else Decimal(str(opportunity_amount))
    counters = (
        1,
        1 if contact.fit_grade in GOOD_FIT else 0,
        1 if reached_sql else 0,
        1 if contact.customer_at is not None else 0,
        amount if opportunity_stage in OPEN_OR_WON else Decimal(0),
        amount if opportunity_stage == "customer" else Decimal(0),
    )
    days = None
    if contact.sql_at is not None:
        # whole seconds, as the migration's backfill counts them in SQL
        days = max(0, (math.floor(as_utc(contact.sql_at).timestamp()) - math.floor(first.timestamp())) // 86400)
    return Contribution((first.date(), entry, motion, contact.first_touch_channel or ""), counters, days)


@dataclass(slots=True)
class Deltas:
    """The changes a transaction makes to the rollups, summed by key until it writes them."""

    days: dict[tuple, list] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0, Decimal(0), Decimal(0)]))
    days_to_sql: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    effort: dict[tuple, list] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, c: Contribution, sign: int) -> None:
        row = self.days[c.key]
        for i, value in enumerate(c.counters):
            row[i] += sign * value
        if c.days_to_sql is not None:
            self.days_to_sql[(*c.key[:3], c.days_to_sql)] += sign

    def change(self, before: Contribution | None, after: Contribution | None) -> None:
        """A contact's row went from ``before`` (``None``: new) to ``after``."""
        if before == after:
            return
        if before is not None:
            self.add(before, -1)
        if after is not None:
            self.add(after, +1)

    def fact(self, event_type: str, motion: str, occurred_at: datetime) -> None:
        """A stored fact: a form submission or a sales touch counts as effort (a prospect record does not)."""
        if event_type == LEAD_CAPTURED:
            self.effort[(as_utc(occurred_at).date(), motion)][0] += 1
        elif event_type == TOUCH_RECORDED:
            self.effort[(as_utc(occurred_at).date(), motion)][1] += 1

    def rows(self) -> tuple[list[dict], list[dict], list[dict]]:
        """The non-zero changes per table, in key order."""
        days = [dict(zip(("day", "entry_motion", "motion", "channel"), key)) | dict(zip(_COUNTERS, values))
                for key, values in sorted(self.days.items()) if any(values)]
        to_sql = [{"day": k[0], "entry_motion": k[1], "motion": k[2], "days": k[3], "contacts": n}
                  for k, n in sorted(self.days_to_sql.items()) if n]
        effort = [{"day": k[0], "motion": k[1], "forms": v[0], "touches": v[1]}
                  for k, v in sorted(self.effort.items()) if any(v)]
        return days, to_sql, effort


async def write(session: AsyncSession, deltas: Deltas) -> None:
    """Add ``deltas`` to the stored rollups: one executemany upsert per table."""
    days, to_sql, effort = deltas.rows()
    for table, rows in ((DAYS, days), (DAYS_TO_SQL, to_sql), (EFFORT, effort)):
        await add_many(session, table, rows)
