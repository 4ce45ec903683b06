"""Reclassifying the store under other channel rules (``leadstream rescore --channels``).

Each contact's inbound touches (stored leads) are classified again from their stored
payloads under the new rules, and the contact's and its opportunities' first and last
touches replayed from the reclassified timeline, as qualification computes them. The
report counts, per channel, the contacts and opportunities before and after. Applied, the
new channels and the rules' version are stored while the workers may be running: a page of
contacts is read ``FOR UPDATE`` in one transaction (as ``rescore.py`` does), and a contact
whose attribution changes has its row changed, so a worker's batch that read it before
runs again.

A rules version names the rules that classified a touch, so changed rules must carry a new
one: rules whose version is recorded on a stored lead they would classify to another
channel are refused (``RulesVersionConflict``) before anything is read or changed, dry run
or not. Rules of a version the store has not seen, or that classify every touch of their
version as it was, pass.

The caller (the composition root) owns the database: it hands ``reclassify_all`` a
``Database`` and disposes of it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import source_rollups
from pipeline_store.models import AttributionCredit, Contact, Opportunity, Touch
from services.qualification import records, repository
from services.qualification.domain import attribution, evaluation
from services.qualification.domain.channels import ChannelRules
from services.qualification.records import ContactRecord
from shared.db import Database
from shared.events import LEAD_CAPTURED
from shared.retry import transaction_with_retries
from shared.times import as_utc

# what is counted per channel: contacts by first touch, opportunities by first and last touch
MEASURES = ("contacts", "opportunities_first", "opportunities_last")
_HEADINGS = {"contacts": "contacts (first touch)", "opportunities_first": "opportunities (first touch)",
             "opportunities_last": "opportunities (last touch)"}


class RulesVersionConflict(ValueError):
    """Rules whose version already classified stored leads to other channels than they would."""

    def __init__(self, version: str, touches: int) -> None:
        super().__init__(f"version {version} already classified {touches} touches differently; "
                         "give the changed rules a new version")
        self.version, self.touches = version, touches


@dataclass
class ReclassifyReport:
    """What new channel rules change: per measure and channel, the count before and after."""

    version: str
    applied: bool
    contacts_read: int = 0
    touches_read: int = 0
    touches_moved: Tally = field(default_factory=Tally)  # (from, to) -> touches
    contacts_changed: int = 0
    opportunities_changed: int = 0
    before: dict[str, Tally] = field(default_factory=lambda: {m: Tally() for m in MEASURES})
    delta: dict[str, Tally] = field(default_factory=lambda: {m: Tally() for m in MEASURES})

    def move(self, measure: str, old: str | None, new: str | None) -> None:
        if old != new:
            self.delta[measure][old] -= 1
            self.delta[measure][new] += 1

    def after(self, measure: str) -> Tally:
        out = Tally(self.before[measure])
        out.update(self.delta[measure])
        return out

    def add(self, other: ReclassifyReport) -> None:
        self.contacts_read += other.contacts_read
        self.touches_read += other.touches_read
        self.touches_moved.update(other.touches_moved)
        self.contacts_changed += other.contacts_changed
        self.opportunities_changed += other.opportunities_changed
        for measure in MEASURES:
            self.delta[measure].update(other.delta[measure])

    def lines(self) -> list[str]:
        moved = sum(self.touches_moved.values())
        out = [f"channel rules {self.version}: {self.contacts_read} contacts, {self.touches_read} inbound touches "
               f"classified again, {moved} change channel; {self.contacts_changed} contacts and "
               f"{self.opportunities_changed} opportunities change first or last touch"]
        for (old, new), count in sorted(self.touches_moved.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  touches {old} -> {new}: {count}")
        for measure in MEASURES:
            after = self.after(measure)
            channels = sorted({c for c, n in self.before[measure].items() if n} | {c for c, n in after.items() if n},
                              key=lambda c: (c is None, c or ""))
            if not channels:
                continue
            out.append(f"  {_HEADINGS[measure]}:")
            for channel in channels:
                old, new = self.before[measure][channel], after[channel]
                mark = "" if old == new else f"  ({new - old:+d})"
                out.append(f"    {channel or 'unattributed'}: {old} -> {new}{mark}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "applied": self.applied, "contacts_read": self.contacts_read,
            "touches_read": self.touches_read, "contacts_changed": self.contacts_changed,
            "opportunities_changed": self.opportunities_changed,
            "touches_moved": {f"{old}->{new}": n for (old, new), n in self.touches_moved.items()},
            **{measure: {"before": {str(k): v for k, v in self.before[measure].items() if v},
                         "after": {str(k): v for k, v in self.after(measure).items() if v}} for measure in MEASURES},
        }


async def _counts(session: AsyncSession, report: ReclassifyReport) -> None:
    """The per-channel counts before (one grouped query per measure)."""
    for measure, column, model in (("contacts", Contact.first_touch_channel, Contact),
                                   ("opportunities_first", Opportunity.first_touch_channel, Opportunity),
                                   ("opportunities_last", Opportunity.last_touch_channel, Opportunity)):
        rows = await session.execute(select(column, func.count()).select_from(model).group_by(column))
        report.before[measure] = Tally({channel: count for channel, count in rows})


async def reclassify_contact(session: AsyncSession, rules: ChannelRules, contact: ContactRecord,
                             report: ReclassifyReport, *, apply: bool, now: datetime) -> None:
    """Classify one contact's stored leads again under ``rules``, count what moves in
    ``report`` and, if ``apply``, store it in the caller's unit of work."""
    report.contacts_read += 1
    rows = (await session.execute(
        select(Touch.event_id, Touch.channel, Touch.channel_rules_version, Touch.data)
        .where(Touch.contact_id == contact.id, Touch.event_type == LEAD_CAPTURED)
    )).all()
    channels: dict[str, str] = {}
    restamp: list[str] = []
    for event_id, old, version, data in rows:
        if not isinstance(data, dict) or not data:
            continue  # no payload to classify (erased): the channel stays
        report.touches_read += 1
        new = rules.classify_lead(data)
        if new != old:
            channels[event_id] = new
            report.touches_moved[(old, new)] += 1
        elif version != rules.version:
            restamp.append(event_id)
    if apply:
        for event_id, channel in channels.items():
            await session.execute(update(Touch).where(Touch.event_id == event_id)
                                  .values(channel=channel, channel_rules_version=rules.version))
            # an opportunity's credits name the touch's channel (their weights do not depend on it)
            await session.execute(update(AttributionCredit).where(AttributionCredit.event_id == event_id)
                                  .values(channel=channel))
        for chunk in (restamp[i:i + 500] for i in range(0, len(restamp), 500)):
            await session.execute(update(Touch).where(Touch.event_id.in_(chunk))
                                  .values(channel_rules_version=rules.version))
    if not channels:
        return
    timeline = await repository.timeline(session, contact.id)
    facts = [dataclasses.replace(f, channel=channels[f.event_id]) if f.event_id in channels else f
             for f in timeline.facts]
    _, first, last = evaluation.attribute(facts, timeline.real, as_utc(contact.sql_at))
    report.move("contacts", contact.first_touch_channel, _channel(first))
    if (_channel(first), _channel(last)) != (contact.first_touch_channel, contact.last_touch_channel):
        report.contacts_changed += 1
    opportunities = (await session.execute(select(Opportunity).where(Opportunity.contact_id == contact.id))
                     ).scalars().all()
    for opp in opportunities:
        _, opp_first, opp_last = evaluation.attribute(facts, timeline.real, as_utc(opp.qualified_at))
        report.move("opportunities_first", opp.first_touch_channel, _channel(opp_first))
        report.move("opportunities_last", opp.last_touch_channel, _channel(opp_last))
        if (_channel(opp_first), _channel(opp_last)) != (opp.first_touch_channel, opp.last_touch_channel):
            report.opportunities_changed += 1
            if apply:
                records.set_touch(opp, "first", opp_first)
                records.set_touch(opp, "last", opp_last)
                opp.updated_at = now
    if apply:
        records.set_touch(contact, "first", first)
        records.set_touch(contact, "last", last)
        # the row changes even when its attribution does not: a worker's batch that read the
        # old timeline finds the contact changed and runs again (records.py)
        contact.updated_at = max(as_utc(contact.updated_at) or now, now)


def _channel(touch: attribution.Touch | None) -> str | None:
    return touch.channel if touch is not None else None


async def reclassify_page(session: AsyncSession, rules: ChannelRules, contact_ids: list[str]) -> ReclassifyReport:
    """Reclassify and store one page of contacts in the caller's unit of work, each read
    ``FOR UPDATE`` (held until it commits)."""
    page = ReclassifyReport(rules.version, True)
    now = datetime.now(timezone.utc)
    for contact_id in contact_ids:
        contact = await repository.contact_by_id(session, contact_id, lock=True)
        if contact is not None:
            await reclassify_contact(session, rules, contact, page, apply=True, now=now)
    return page


async def version_conflicts(db: Database, rules: ChannelRules, page_size: int = 1000) -> int:
    """How many stored leads that ``rules.version`` classified ``rules`` would classify to
    another channel (0: the version names these rules, as far as the store can tell)."""
    conflicts, after = 0, ""
    while True:
        async with db.reader() as session:
            rows = (await session.execute(
                select(Touch.event_id, Touch.channel, Touch.data)
                .where(Touch.event_type == LEAD_CAPTURED, Touch.channel_rules_version == rules.version,
                       Touch.event_id > after)
                .order_by(Touch.event_id).limit(page_size)
            )).all()
        for _, channel, data in rows:
            if isinstance(data, dict) and data and rules.classify_lead(data) != channel:
                conflicts += 1
        if len(rows) < page_size:
            return conflicts
        after = rows[-1][0]


async def reclassify_all(db: Database, rules: ChannelRules, *, apply: bool) -> ReclassifyReport:
    """Reclassify every contact of ``db`` (the pipeline store) under ``rules``, a page per
    transaction (a page that meets a deadlock or a busy database runs again); a dry run
    only reads. ``RulesVersionConflict`` first, changing nothing, if ``rules`` are changed
    rules under a version the store already holds."""
    conflicts = await version_conflicts(db, rules)
    if conflicts:
        raise RulesVersionConflict(rules.version, conflicts)
    report = ReclassifyReport(rules.version, apply)
    async with db.reader() as session:
        await _counts(session, report)
    now = datetime.now(timezone.utc)
    async for page in repository.iter_contact_ids(db):
        if apply:
            report.add(await transaction_with_retries(
                db, lambda session, page=page: reclassify_page(session, rules, page)))
        else:
            async with db.reader() as session:
                for contact_id in page:
                    contact = await repository.contact_by_id(session, contact_id)
                    if contact is not None:
                        await reclassify_contact(session, rules, contact, report, apply=False, now=now)
    if apply:  # the sources rollups from the reclassified first touches and credits
        await transaction_with_retries(db, source_rollups.rebuild)
    return report
