"""Erasure requests: the coordinator of the saga (``privacy.requests``).

``request_erasure`` records the request (the person as a keyed hash), one pending row per
store and ``erasure.requested`` in the outbox, in one transaction; every store that holds
personal data consumes it, erases, and reports ``erasure.completed`` on the same topic;
``record_report`` (the pipeline service's consumer of that topic) marks the store done and
the request completed when every store is (audited as ``completed``). A request for a person
with an erasure under way, or erased and not opted in since, answers that erasure: the same
request twice erases once (unless the pipeline store holds the person again: then it is a
new erasure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from pipeline_store.models import ErasureAudit, ErasureRequest, ErasureStore, PipelineOutbox
from services.pipeline.privacy import repository
from services.pipeline.privacy.schemas import ErasureOut, StoreProgress
from shared.consumer import Delivery
from shared.db import transaction_time
from shared.errors import ProblemError
from shared.identity import normalise_email
from shared.events import ERASURE_REQUESTED, ErasureCompleted, ErasureRequested, make_event, new_event_id
from shared.outbox import stage_event
from shared.privacy import PrivacyKey

SOURCE = "/leadstream/pipeline"
# every store that holds personal data, by the name it reports under
STORES = ("capture", "outreach", "pipeline")


@dataclass(frozen=True)
class Requested:
    erasure_id: str
    status: str
    new: bool


async def request_erasure(session: AsyncSession, privacy: PrivacyKey, email: str, actor: str) -> Requested:
    """Ask every store to erase the person of ``email`` (or answer the erasure already asked)."""
    subject = privacy.subject_of_email(email)
    now = transaction_time(session)
    existing = await repository.latest_for(session, subject)
    if existing is not None and (existing.status == "pending" or (
            await repository.still_erased(session, subject)
            # a person the store holds again, though never opted in since, is erased again:
            # a repeated request must not answer "completed" while they are still there
            and await repository.contact_id_by_email(session, normalise_email(email)) is None)):
        asked = ",".join(s.store for s in await repository.stores(session, existing.id))
        repository.add(session, ErasureAudit(erasure_id=existing.id, actor=actor, outcome="repeated", at=now,
                                             stores=asked))
        return Requested(existing.id, existing.status, new=False)
    erasure_id = new_event_id()
    repository.add(
        session,
        ErasureRequest(id=erasure_id, subject=subject, status="pending", requested_by=actor, requested_at=now),
        *(ErasureStore(erasure_id=erasure_id, store=store, status="pending") for store in STORES),
        ErasureAudit(erasure_id=erasure_id, actor=actor, outcome="requested", at=now, stores=",".join(STORES)),
    )
    data = ErasureRequested(erasure_id=erasure_id, subject=subject, requested_at=now)
    event = make_event(ERASURE_REQUESTED, data, source=SOURCE, subject=subject, time=now, event_id=erasure_id)
    stage_event(session, PipelineOutbox, event, key=subject)
    return Requested(erasure_id, "pending", new=True)


async def erasure_status(session: AsyncSession, erasure_id: str) -> ErasureOut:
    found = await repository.request(session, erasure_id)
    if found is None:
        raise ProblemError(404, f"No erasure with id {erasure_id!r}.")
    return ErasureOut(
        erasure_id=found.id, status=found.status, requested_at=_utc(found.requested_at),
        completed_at=_utc(found.completed_at),
        stores=[StoreProgress(store=s.store, status=s.status, records=s.records, completed_at=_utc(s.completed_at))
                for s in await repository.stores(session, erasure_id)],
    )


async def record_report(session: AsyncSession, delivery: Delivery) -> None:
    """A store's ``erasure.completed``: that store is done; the erasure when all are."""
    report: ErasureCompleted = delivery.data
    erasure = await repository.request(session, report.erasure_id, lock=True)
    if erasure is None:
        return  # not ours (another installation sharing the topic): nothing to record
    stores = {s.store: s for s in await repository.stores(session, erasure.id)}
    store = stores.get(report.store)
    if store is None:
        store = stores[report.store] = ErasureStore(erasure_id=erasure.id, store=report.store, status="pending")
        repository.add(session, store)
    if store.status != "completed":
        store.status, store.records, store.completed_at = "completed", report.records, report.completed_at
    if erasure.status != "completed" and all(s.status == "completed" for s in stores.values()):
        erasure.status = "completed"
        erasure.completed_at = max(_utc(s.completed_at) for s in stores.values())
        repository.add(session, ErasureAudit(erasure_id=erasure.id, actor=erasure.requested_by, outcome="completed",
                                             at=erasure.completed_at, stores=",".join(sorted(stores))))
    await session.flush()


async def ignore(session: AsyncSession, delivery: Delivery) -> None:
    """Requests and lifted suppressions on the same topic: the stores' business."""


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
