"""The lifecycle of a contact: automatic qualification and manual sales transitions.

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

Manual transitions (``check_transition``) are the pipeline API's: accept (``sql →
opportunity``), win (``opportunity → customer``, with an amount > 0), and the exits
(``lost``/``disqualified``/``nurture``, with a reason) from any open stage; a nurtured
contact may be recycled to ``lead`` by hand. ``customer``, ``lost`` and
``disqualified`` are closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
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

_MANUAL: dict[str, frozenset[str]] = {
    "prospect": frozenset({"disqualified", "nurture"}),
    "lead": frozenset(SIDE_EXITS),
    "mql": frozenset(SIDE_EXITS),
    "sql": frozenset({"opportunity", *SIDE_EXITS}),
    "opportunity": frozenset({"customer", *SIDE_EXITS}),
    "nurture": frozenset({"lead", "disqualified"}),
    "customer": frozenset(),
    "lost": frozenset(),
    "disqualified": frozenset(),
}


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


class IllegalTransition(Exception):
    """A manual move the lifecycle does not allow (the API answers 409)."""

    def __init__(self, current: str, to: str, allowed: Iterable[str]):
        self.current = current
        self.to = to
        self.allowed = tuple(sorted(allowed))
        choices = ", ".join(self.allowed) or "none: the stage is closed"
        super().__init__(f"cannot move from {current} to {to} (allowed: {choices})")


class TransitionInvalid(ValueError):
    """A legal move missing what it needs (the API answers 422 naming ``field``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class Transition:
    """A checked manual transition, with its reason and amount cleaned up."""

    from_stage: str
    to_stage: str
    reason: str | None
    amount: Decimal | None


def allowed_transitions(current: str) -> set[str]:
    """The stages a person may move a contact in ``current`` to by hand."""
    return set(_MANUAL.get(current, frozenset()))


def _amount(amount: Any) -> Decimal:
    if amount is None:
        raise TransitionInvalid("amount", "a won opportunity needs its amount")
    if isinstance(amount, bool):
        raise TransitionInvalid("amount", "must be a number greater than 0")
    try:
        value = Decimal(str(amount).strip())
    except (InvalidOperation, ValueError):
        raise TransitionInvalid("amount", "must be a number greater than 0") from None
    if not value.is_finite() or value <= 0:
        raise TransitionInvalid("amount", "must be a number greater than 0")
    return value


def check_transition(current: str, to: str, reason: str | None = None, amount: Any = None) -> Transition:
    """Check a manual move: ``IllegalTransition`` if ``to`` is not reachable from
    ``current``; ``TransitionInvalid`` if a win lacks a positive ``amount`` or an exit
    (lost, disqualified, nurture) lacks a ``reason``.
    """
    allowed = allowed_transitions(current)
    if to not in allowed:
        raise IllegalTransition(current, to, allowed)
    clean_reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
    if to in SIDE_EXITS and clean_reason is None:
        raise TransitionInvalid("reason", f"moving to {to} needs a reason")
    value = _amount(amount) if to == "customer" else None
    if to != "customer" and amount is not None:
        value = _amount(amount)  # an amount given on another move is still checked
    return Transition(from_stage=current, to_stage=to, reason=clean_reason, amount=value)

