"""The lifecycle of a contact and its automatic qualification.

``prospect → lead → mql → sql → opportunity → customer``, with side exits ``lost``,
``disqualified`` and ``nurture``.

Automatic qualification (``evaluate``) only moves forward, and at most to ``sql``: from
``sql`` on, the contact's opportunity belongs to sales. It never moves a contact out of
``sql``, ``opportunity``, ``customer``, ``lost`` or ``disqualified``. The spec's outcome
rules are the only automatic side exits, and only before ``sql``:

- ``bounced`` marks the email invalid; no stage change, and never qualifies.
- ``unsubscribed`` → ``disqualified`` (the spec's "unsubscribed or not-interested
  disqualify or nurture", read respectively: a contact who opted out cannot be nurtured
  by email, and ``disqualified`` is final, so an opt-out never re-qualifies
  automatically; sales can still see and handle the contact).
- ``not_interested`` → ``nurture`` ("not now"): a nurtured contact re-qualifies
  automatically to ``mql``/``sql`` on new engagement (as a HubSpot/Salesforce "recycled"
  lead does; score it with ``engagement_score(..., since=<entered nurture>)``).

Manual moves (accept, win, lose, disqualify, nurture an opportunity) are the pipeline's:
their one table is ``services/pipeline/transitions.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.qualification.domain.policy import PolicySet
from services.qualification.domain.scoring import EngagementScore, FitScore

LIFECYCLE = ("prospect", "lead", "mql", "sql", "opportunity", "customer")
SIDE_EXITS = ("lost", "disqualified", "nurture")
STAGES = LIFECYCLE + SIDE_EXITS
QUALIFIED = "sql"
# Stages automatic qualification may still move a contact out of.
AUTOMATIC = frozenset({"prospect", "lead", "mql", "nurture"})
# Outcomes that never qualify: the touch carrying one changes no score-based stage.
SUPPRESSING_OUTCOMES = frozenset({"bounced", "unsubscribed", "not_interested"})
_OUTCOME_EXITS = (("unsubscribed", "disqualified"), ("not_interested", "nurture"))

@dataclass(frozen=True, slots=True)
class Decision:
    """What one fact does to a contact's stage.

    ``steps`` are the stages entered, in order (``("mql", "sql")`` for a lead jumping to
    sql), so the stage history records each; empty when nothing changes. ``rule`` names
    the criterion or outcome that decided (``"inbound.sql.hand_raiser"``,
    ``"outcome.unsubscribed"``). ``qualified`` is true exactly when this decision enters
    ``sql`` (publish one ``opportunity.qualified``).
    """

    from_stage: str | None
    to_stage: str
    steps: tuple[str, ...]
    rule: str | None
    qualified: bool
    email_invalid: bool
    unsubscribed: bool
    policy_version: str

    @property
    def changed(self) -> bool:
        return bool(self.steps)


def _rank(stage: str) -> int:
    return LIFECYCLE.index(stage)


def _path(after: str | None, to: str) -> tuple[str, ...]:
    """The lifecycle stages entered going from ``after`` (exclusive) to ``to``."""
    start = 0 if after is None else _rank(after) + 1
    return LIFECYCLE[start : _rank(to) + 1]


def _holds(criterion: Any, motion: str, fit: FitScore, engagement: EngagementScore) -> bool:
    return (
        fit.points >= criterion.min_fit
        and engagement.points >= criterion.min_engagement
        and (not criterion.any_signal or any((motion, s) in engagement.signals for s in criterion.any_signal))
        and (not criterion.business_email or fit.business_email)
        and set(criterion.fields) <= fit.fields
    )


def reached_stage(
    motion: str, fit: FitScore, engagement: EngagementScore, policy: PolicySet
) -> tuple[str | None, str | None]:
    """The furthest of ``lead``/``mql``/``sql`` the scores reach under the motion's
    policy, and the rule that reached it; ``(None, None)`` when none.

    A ``blended`` contact is judged by both policies and gets the better outcome: each
    motion's signals met the bar of the motion that produced them.
    """
    motions = ("inbound", "outbound") if motion == "blended" else (motion,)
    best: tuple[str | None, str | None] = (None, None)
    for name in motions:
        rules = policy.for_motion(name)
        for stage in ("sql", "mql", "lead"):
            if best[0] is not None and _rank(best[0]) >= _rank(stage):
                break
            criterion = next((c for c in getattr(rules, stage) if _holds(c, name, fit, engagement)), None)
            if criterion is not None:
                best = (stage, f"{name}.{stage}.{criterion.name}")
                break
    return best


def entry_stage(motion: str) -> str:
    """The stage a new contact starts in: a form is already interest (``lead``); an
    outbound prospect has shown none yet (``prospect``)."""
    return "prospect" if motion == "outbound" else "lead"


def evaluate(
    current_stage: str | None,
    motion: str,
    fit: FitScore,
    engagement: EngagementScore,
    outcome_flags: Iterable[str],
    policy: PolicySet,
) -> Decision:
    """The stage a contact moves to after a fact.

    ``current_stage`` is ``None`` for a contact this fact creates (it enters
    ``entry_stage(motion)`` first). ``outcome_flags`` are the outcomes the fact carries
    (``{"bounced"}``); a fact with a suppressing outcome (bounced, unsubscribed,
    not_interested) never qualifies, whatever the scores say.
    """
    flags = set(outcome_flags or ())
    entered = () if current_stage is not None else (entry_stage(motion),)
    stage = current_stage or entered[0]

    def decide(steps: tuple[str, ...], rule: str | None) -> Decision:
        steps = entered + steps
        return Decision(
            from_stage=current_stage,
            to_stage=steps[-1] if steps else stage,
            steps=steps,
            rule=rule,
            qualified=QUALIFIED in steps,
            email_invalid="bounced" in flags,
            unsubscribed="unsubscribed" in flags,
            policy_version=policy.version,
        )

    if flags & SUPPRESSING_OUTCOMES:
        for outcome, exit_stage in _OUTCOME_EXITS:
            if outcome in flags:
                moves = stage in AUTOMATIC and stage != exit_stage
                return decide((exit_stage,) if moves else (), f"outcome.{outcome}")
        return decide((), "outcome.bounced")
    if stage not in AUTOMATIC:
        return decide((), None)
    reached, rule = reached_stage(motion, fit, engagement, policy)
    if stage == "nurture":
        if reached in ("mql", "sql"):
            return decide(_path("lead", reached), rule)
        return decide((), None)
    if reached is None or _rank(reached) <= _rank(stage):
        return decide((), None)
    return decide(_path(stage, reached), rule)
