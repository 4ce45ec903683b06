"""Multi-touch attribution models: how one opportunity's credit is split over its touches.

Implements item 2 (and the ordering rule of item 1) of the spec section "Attribution
models and channel rules" (``shared/spec/PRODUCT.md``) as pure functions: values in,
values out, no I/O. Qualification's evaluation (``domain/evaluation.py``) calls it for every
opportunity; the credits it computes are stored (``attribution_credits``) and summed into
the sources rollups at commit (``services/qualification/credits.py``).

Inputs are :class:`~services.qualification.domain.attribution.Touch` values (event id,
motion, channel, campaign, ``occurred_at``) and the qualification moment (the contact
reaching ``sql``). The caller picks the *counting* touches (those the motion's policy
gives positive engagement points); this module only orders them and applies the lookback:

- **Order**: by ``occurred_at``, then event id (a touch without an event id sorts before
  one with, on a tie). A touch that arrives late but occurred earlier takes its place, so
  every model sees the same order whatever the arrival order (:func:`ordered`).
- **Lookback** (:func:`within_lookback`): touches with
  ``qualified_at - lookback <= occurred_at <= qualified_at`` (default 90 days). Both ends
  are inclusive: the qualifying touch itself (at ``qualified_at``) counts, as it does for
  last touch in ``attribution.last_touch_before_qualification``.

Models (:data:`MODELS`; credits of one opportunity sum to 1, :func:`attribute`):

- ``first``: 1 to the earliest touch.
- ``last``: 1 to the latest touch (the last before qualification).
- ``linear``: 1/n each.
- ``position``: n = 1: 1; n = 2: ½ each; n ≥ 3: 0.4 first, 0.4 last, 0.2/(n − 2) each other.
- ``time_decay``: weight 2^(−Δt / 7 days), Δt from the touch to qualification, normalised.
  Computed relative to the latest touch (the same ratios), so touches years old never
  underflow to an all-zero sum.
- ``w_shaped``: 0.3 each to the first touch, the touch that made the contact ``mql`` and
  the last touch (before ``sql``); the other touches share 0.1 equally. Weights of
  milestones that fall on one touch add up. The weights present are then normalised to
  sum to 1, which is the spec's rule "with no other touch the milestones' weights are
  scaled to sum to 1" and changes nothing when three distinct milestones and other
  touches exist (0.9 + 0.1).
  *Decision (the spec is silent)*: when the ``mql`` touch is not known (no event id
  given, or it is not among the counting touches, e.g. outside the lookback), the ``mql``
  milestone is absent and the remaining weights are normalised the same way: with others,
  first and last 0.3/0.7 = 3/7 each, the others sharing 1/7; with n = 2, ½ each; n = 1, 1.
  The milestone is not moved to another touch, so no touch gains credit for a step it did
  not make, and the ratio first : last : others stays the one the model defines.

An opportunity with no counting touch gets no credit (an empty tuple): the caller decides
how to show it (e.g. as unattributed). A touch after ``qualified_at`` is a caller error
(``ValueError``): it cannot be a counting touch.

Amount credit = credit × amount (:func:`amount_credits`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, get_args

from services.qualification.domain.attribution import Touch

Model = Literal["first", "last", "linear", "position", "time_decay", "w_shaped"]
MODELS: tuple[Model, ...] = get_args(Model)

DEFAULT_LOOKBACK = timedelta(days=90)
HALF_LIFE = timedelta(days=7)

POSITION_END_SHARE = 0.4
POSITION_MIDDLE_SHARE = 0.2
W_MILESTONE_SHARE = 0.3
W_OTHERS_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Credit:
    """One touch's share of an opportunity under a model (0 ≤ ``credit`` ≤ 1)."""

    touch: Touch
    credit: float


def order_key(touch: Touch) -> tuple[datetime, bool, str]:
    """The sort key of a touch: occurrence time, then event id (none first)."""
    return (touch.occurred_at, touch.event_id is not None, touch.event_id or "")


def ordered(touches: Iterable[Touch]) -> tuple[Touch, ...]:
    """The touches by ``occurred_at``, then event id, whatever order they arrived in."""
    return tuple(sorted(touches, key=order_key))


def within_lookback(
    touches: Iterable[Touch], qualified_at: datetime, lookback: timedelta = DEFAULT_LOOKBACK
) -> tuple[Touch, ...]:
    """The touches that occurred in ``[qualified_at - lookback, qualified_at]``, ordered.

    Raises ``ValueError`` for a negative lookback.
    """
    if lookback < timedelta(0):
        raise ValueError(f"lookback must not be negative, got {lookback}")
    start = qualified_at - lookback
    return ordered(t for t in touches if start <= t.occurred_at <= qualified_at)


def attribute(
    model: str,
    touches: Iterable[Touch],
    qualified_at: datetime,
    *,
    mql_event_id: str | None = None,
) -> tuple[Credit, ...]:
    """Each counting touch's credit under ``model``, in touch order; credits sum to 1.

    ``touches`` are the opportunity's counting touches in any order (already within the
    lookback); ``mql_event_id`` names the touch that made the contact ``mql`` (used by
    ``w_shaped`` only). Raises ``ValueError`` for an unknown model or a touch that
    occurred after ``qualified_at``; no touches give an empty tuple.
    """
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}; known: {', '.join(MODELS)}")
    return _credits(model, _chain(touches, qualified_at), qualified_at, mql_event_id)


def attribute_all(
    touches: Iterable[Touch],
    qualified_at: datetime,
    *,
    mql_event_id: str | None = None,
) -> dict[str, tuple[Credit, ...]]:
    """:func:`attribute` under every model of :data:`MODELS`, the touches ordered and checked once."""
    chain = _chain(touches, qualified_at)
    return {model: _credits(model, chain, qualified_at, mql_event_id) for model in MODELS}


def _chain(touches: Iterable[Touch], qualified_at: datetime) -> tuple[Touch, ...]:
    chain = ordered(touches)
    late = [t for t in chain if t.occurred_at > qualified_at]
    if late:
        raise ValueError(
            f"touch {late[0].event_id!r} occurred at {late[0].occurred_at.isoformat()}, "
            f"after qualification at {qualified_at.isoformat()}"
        )
    return chain


def _credits(model: str, chain: tuple[Touch, ...], qualified_at: datetime,
             mql_event_id: str | None) -> tuple[Credit, ...]:
    if not chain:
        return ()
    weights = _WEIGHTS[model](chain, qualified_at, mql_event_id)
    total = sum(weights)
    return tuple(Credit(touch, weight / total) for touch, weight in zip(chain, weights, strict=True))


def amount_credits(credits: Sequence[Credit], amount: float | Decimal | int) -> tuple[float, ...]:
    """Each touch's share of ``amount``: credit × amount, in the order of ``credits``."""
    value = float(amount)
    return tuple(c.credit * value for c in credits)


def _first(chain: Sequence[Touch], _q: datetime, _m: str | None) -> list[float]:
    return [1.0] + [0.0] * (len(chain) - 1)


def _last(chain: Sequence[Touch], _q: datetime, _m: str | None) -> list[float]:
    return [0.0] * (len(chain) - 1) + [1.0]


def _linear(chain: Sequence[Touch], _q: datetime, _m: str | None) -> list[float]:
    return [1.0] * len(chain)


def _position(chain: Sequence[Touch], _q: datetime, _m: str | None) -> list[float]:
    n = len(chain)
    if n <= 2:
        return [1.0] * n
    middle = POSITION_MIDDLE_SHARE / (n - 2)
    return [POSITION_END_SHARE] + [middle] * (n - 2) + [POSITION_END_SHARE]


def _time_decay(chain: Sequence[Touch], qualified_at: datetime, _m: str | None) -> list[float]:
    # 2^(-Δt/h) normalised equals 2^(-(Δt - Δt_min)/h) normalised; the latter keeps the
    # largest weight at 1, so the sum never underflows to zero.
    half_life = HALF_LIFE.total_seconds()
    ages = [(qualified_at - t.occurred_at).total_seconds() for t in chain]
    youngest = min(ages)
    return [2.0 ** (-(age - youngest) / half_life) for age in ages]


def _w_shaped(chain: Sequence[Touch], _q: datetime, mql_event_id: str | None) -> list[float]:
    n = len(chain)
    weights = [0.0] * n
    milestones = {0, n - 1}
    weights[0] += W_MILESTONE_SHARE
    weights[n - 1] += W_MILESTONE_SHARE
    if mql_event_id is not None:
        mql = next((i for i, t in enumerate(chain) if t.event_id == mql_event_id), None)
        if mql is not None:
            weights[mql] += W_MILESTONE_SHARE
            milestones.add(mql)
    others = n - len(milestones)
    if others:
        for i in range(n):
            if i not in milestones:
                weights[i] = W_OTHERS_SHARE / others
    return weights


_WEIGHTS = {
    "first": _first,
    "last": _last,
    "linear": _linear,
    "position": _position,
    "time_decay": _time_decay,
    "w_shaped": _w_shaped,
}
