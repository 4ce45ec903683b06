"""Re-scoring the store under another policy version (``leadstream rescore``).

Each contact's stored history is replayed fact by fact under the new policy; the report
counts, by motion, the contacts whose grade or stage would change. Applied, the new
scores are stored and stages moved forward only (never back, never out of sales' hands),
with their events through the outbox, while the workers may be running: a page of
contacts is read ``FOR UPDATE`` in one transaction, so a re-score and a worker's batch
wait for each other and neither overwrites the other.

The caller (the composition root) owns the database: it hands ``rescore_all`` a
``Database`` and disposes of it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store import source_rollups
from services.qualification import repository
from services.qualification.domain import evaluation, ids
from services.qualification.domain.policy import PolicySet
from services.qualification.records import ContactRecord
from services.qualification.service import Qualifier, account_values_of, apply_evaluation, refresh_credits
from shared.db import Database
from shared.retry import transaction_with_retries
from shared.times import as_utc


@dataclass
class RescoreReport:
    """What a new policy version changes, by motion."""

    version: str
    applied: bool
    contacts: Tally = field(default_factory=Tally)
    grade_changes: Tally = field(default_factory=Tally)
    stage_changes: Tally = field(default_factory=Tally)
    moves: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))

    def lines(self) -> list[str]:
        out = [f"policy {self.version}: {sum(self.contacts.values())} contacts re-scored"]
        for motion in sorted(self.contacts):
            moves = ", ".join(f"{k}: {v}" for k, v in sorted(self.moves[motion].items())) or "none"
            out.append(f"  {motion}: {self.contacts[motion]} contacts, {self.grade_changes[motion]} change grade, "
                       f"{self.stage_changes[motion]} change stage ({moves})")
        return out

    def add(self, other: RescoreReport) -> None:
        self.contacts.update(other.contacts)
        self.grade_changes.update(other.grade_changes)
        self.stage_changes.update(other.stage_changes)
        for motion, moves in other.moves.items():
            self.moves[motion].update(moves)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "applied": self.applied, "contacts": dict(self.contacts),
                "grade_changes": dict(self.grade_changes), "stage_changes": dict(self.stage_changes),
                "moves": {m: dict(t) for m, t in self.moves.items()}}


async def rescore_contact(session: AsyncSession, policies: PolicySet, contact: ContactRecord, report: RescoreReport,
                          apply: bool) -> None:
    """Replay one contact's history under ``policies``, count what changes in ``report``
    and, if ``apply``, store it in the caller's unit of work."""
    timeline = await repository.timeline(session, contact.id)
    if not timeline.facts:
        return
    facts, real = list(timeline.facts), timeline.real
    account_values = await account_values_of(session, contact)
    result, target, reached_at = evaluation.replay_timeline(
        policies, contact.email, evaluation.profile(contact.firmographics, account_values), facts, real)
    # attribution stays as it is for contacts already qualified
    result.motion, result.first, result.last = evaluation.attribute(facts, real, as_utc(contact.sql_at))
    motion = contact.motion
    report.contacts[motion] += 1
    if result.fit.grade != contact.fit_grade:
        report.grade_changes[motion] += 1
    steps = evaluation.forward_steps(contact.stage, target)
    if steps:
        report.stage_changes[motion] += 1
        report.moves[motion][f"{contact.stage}->{steps[-1]}"] += 1
    if not apply:
        return
    at = reached_at if steps else facts[-1].occurred_at
    if contact.mql_at is not None and contact.mql_event_id is None:  # stored before it was recorded
        contact.mql_event_id = await repository.mql_cause(session, contact.id)
    await apply_evaluation(session, contact, result, policies, cause=ids.rescore_cause(policies.version),
                           at=at, facts=facts, real=real, account_values=account_values, steps=steps)
    # the counting touches follow the policy (and the lookback): every opportunity's credits anew
    await refresh_credits(session, policies, contact, facts, real)


async def rescore_page(session: AsyncSession, q: Qualifier, contact_ids: list[str]) -> RescoreReport:
    """Re-score and store one page of contacts in the caller's unit of work, each read
    ``FOR UPDATE`` (held until it commits)."""
    page = RescoreReport(q.version, True)
    for contact_id in contact_ids:
        contact = await repository.contact_by_id(session, contact_id, lock=True)
        if contact is not None:
            await rescore_contact(session, q.policies, contact, page, apply=True)
    return page


async def rescore_all(db: Database, q: Qualifier, *, apply: bool) -> RescoreReport:
    """Re-score every contact of ``db`` (the pipeline store) under ``q``'s policy version, a
    page per transaction. Applied, a page that meets a deadlock or a busy database runs
    again in a new transaction (counted once); a dry run only reads."""
    report = RescoreReport(q.version, apply)
    async for page in repository.iter_contact_ids(db):
        if apply:
            report.add(await transaction_with_retries(db, lambda session, page=page: rescore_page(session, q, page)))
        else:
            async with db.reader() as session:
                for contact_id in page:
                    contact = await repository.contact_by_id(session, contact_id)
                    await rescore_contact(session, q.policies, contact, report, apply=False)
    if apply:  # the credits are new: the rollups are rebuilt from them and the raw rows
        await transaction_with_retries(db, source_rollups.rebuild)
    return report
