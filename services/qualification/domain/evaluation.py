"""What the policy says about a contact: attribution, scores and the stage decision after a
fact, the replay of a whole history under another policy, and the forward moves a
re-score may make. Values in, values out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from services.qualification.domain import attribution, attribution_models, identity, scoring, stages
from services.qualification.domain.policy import PolicySet

CAUSED_BY_LIMIT = 200  # the facts an opportunity names as its causes, the latest


@dataclass
class Evaluation:
    """What the policy says about a contact after a fact."""

    fit: scoring.FitScore
    engagement: scoring.EngagementScore
    decision: stages.Decision
    motion: str
    first: attribution.Touch | None
    last: attribution.Touch | None


def attribute(facts: list[attribution.Touch], real: set[str], qualified_at: datetime | None
              ) -> tuple[str, attribution.Touch | None, attribution.Touch | None]:
    """Motion, first touch, last touch before qualification. A prospect record (no channel,
    so not in ``real``) counts for the motion, and for first/last touch only when no real
    touch exists."""
    before = [f for f in facts if qualified_at is None or f.occurred_at <= qualified_at]
    motion = attribution.motion_of({f.motion for f in before} or {facts[0].motion})
    touching = [f for f in facts if f.event_id in real] or facts
    first = last = None
    for fact in touching:
        first = attribution.first_touch(first, fact)
        last = attribution.last_touch_before_qualification(last, fact, qualified_at)
    return motion, first, last


def counts(policies: PolicySet, touch: attribution.Touch) -> bool:
    """Whether a touch counts for attribution: its own motion's policy gives its form type
    (inbound) or outcome (outbound) positive engagement points."""
    signal = scoring.signal_of(touch)
    return signal is not None and policies.for_motion(signal[0]).weights.get(signal[1], 0) > 0


def counting_touches(policies: PolicySet, facts: list[attribution.Touch], real: set[str],
                     qualified_at: datetime) -> tuple[attribution.Touch, ...]:
    """An opportunity's counting touches: real touches of both motions that count
    (:func:`counts`) and occurred within the policy's lookback before ``qualified_at``,
    ordered by ``occurred_at`` then event id (a touch synced late takes its place)."""
    lookback = timedelta(days=policies.attribution_lookback_days)
    chosen = (f for f in facts if f.event_id in real and counts(policies, f))
    return attribution_models.within_lookback(chosen, qualified_at, lookback)


def credits(policies: PolicySet, facts: list[attribution.Touch], real: set[str], qualified_at: datetime,
            mql_event_id: str | None) -> dict[str, tuple[attribution_models.Credit, ...]]:
    """Each model's credits over the opportunity's counting touches (empty with none)."""
    chain = counting_touches(policies, facts, real, qualified_at)
    return attribution_models.attribute_all(chain, qualified_at, mql_event_id=mql_event_id)


def profile(firmographics: dict | None, account_values: dict) -> dict:
    """The values a fit score reads: the contact's firmographics, completed by its account's."""
    values = identity.firmographic_values(firmographics or {})
    for name, value in account_values.items():
        if value is not None and name != "domain":
            values.setdefault(name, value)
    return values


def evaluate(policies: PolicySet, current_stage: str | None, email: str, profile: dict,
             facts: list[attribution.Touch], real: set[str], *, as_of: datetime, qualified_at: datetime | None,
             flags: set[str], since: datetime | None = None) -> Evaluation:
    """Attribution, scores and the stage decision for a contact's facts, as of ``as_of``
    (``current_stage`` ``None``: the facts create the contact)."""
    motion, first, last = attribute(facts, real, qualified_at)
    fit = scoring.fit_score(profile, email, policies)
    engagement = scoring.engagement_score(facts, as_of, policies, since=since)
    decision = stages.evaluate(current_stage, motion, fit, engagement, flags, policies)
    return Evaluation(fit, engagement, decision, motion, first, last)


def replay_timeline(policies: PolicySet, email: str, profile: dict, facts: list[attribution.Touch],
                    real: set[str]) -> tuple[Evaluation, str, datetime]:
    """The stored history replayed fact by fact under ``policies`` (each fact scored as of
    its own time): the final evaluation, the furthest lifecycle stage reached and when."""
    stage: str | None = None
    best, best_at = None, facts[0].occurred_at
    result = None
    for n in range(1, len(facts) + 1):
        prefix = facts[:n]
        fact = prefix[-1]
        result = evaluate(policies, stage, email, profile, prefix, real, as_of=fact.occurred_at,
                          qualified_at=None, flags={fact.outcome} if fact.outcome else set())
        stage = result.decision.to_stage
        if stage in stages.LIFECYCLE and (best is None or stages.LIFECYCLE.index(stage) > stages.LIFECYCLE.index(best)):
            best, best_at = stage, fact.occurred_at
    return result, best or stage, best_at


def forward_steps(current: str, target: str) -> tuple[str, ...]:
    """Lifecycle stages from ``current`` (exclusive) to ``target``; none unless forward
    and from a stage qualification still owns (never back, never out of sales' hands)."""
    if current not in ("prospect", "lead", "mql") or target not in stages.LIFECYCLE:
        return ()
    lo, hi = stages.LIFECYCLE.index(current), stages.LIFECYCLE.index(target)
    return stages.LIFECYCLE[lo + 1:min(hi, stages.LIFECYCLE.index(stages.QUALIFIED)) + 1] if hi > lo else ()


def caused_by(facts: list[attribution.Touch], event_cause: str | None, at: datetime) -> list[str]:
    """The facts that led to a qualification at ``at`` (the latest ``CAUSED_BY_LIMIT``), and
    the event that caused it (``None`` for a re-score) if it is not among them."""
    out = [f.event_id for f in facts if f.event_id and f.occurred_at <= at][-CAUSED_BY_LIMIT:]
    if event_cause is not None and event_cause not in out:
        out.append(event_cause)
    return out


@lru_cache(maxsize=4096)
def fit_reasons(reasons: tuple) -> list[dict]:
    """The stored form of a fit score's reasons, one list per distinct set: fit scores are
    memoised per profile, so contacts alike share it (and its JSON text when a batch is
    written). Shared: replaced, never changed in place, like every JSON value of a record."""
    return reasons_of(reasons)


def reasons_of(reasons: Any) -> list[dict]:
    """A score's reasons as stored and published: ``[{"rule": …, "points": …}]``."""
    out = []
    for r in reasons or []:
        if isinstance(r, dict):
            out.append({"rule": str(r["rule"]), "points": float(r["points"])})
        elif isinstance(r, tuple | list):
            out.append({"rule": str(r[0]), "points": float(r[1])})
        else:
            out.append({"rule": str(r.rule), "points": float(r.points)})
    return out
