"""A contact's score: fit (who they are) and engagement (what they did), each 0–100
with the reasons (rule, points) that produced it, under one policy version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from services.qualification.domain.attribution import Touch
from services.qualification.domain.identity import (
    FIRMOGRAPHIC_FIELDS,
    email_domain,
    firmographic_values,
    is_free_mail,
)
from services.qualification.domain.policy import EmployeeBand, KeywordRule, PolicySet


class Reason(NamedTuple):
    """One rule that added (or took) points: ``("fit.seniority.vp", 20)``."""

    rule: str
    points: int


@dataclass(frozen=True, slots=True)
class Score:
    """A 0–100 score, the reasons that sum to it (before clamping) and the policy
    version that made it."""

    points: int
    reasons: tuple[Reason, ...]
    policy_version: str


@dataclass(frozen=True, slots=True)
class FitScore(Score):
    """Fit, with its grade and the facts qualification criteria look at."""

    grade: str = "F"
    business_email: bool = False
    fields: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class EngagementScore(Score):
    """Engagement, with every ``(motion, form_type|outcome)`` signal counted in it."""

    signals: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def _round(points: float) -> int:
    # Half up (not Python's half-to-even), so 7.5 points shows as 8 as people expect.
    return math.floor(points + 0.5)


def _clamp(points: float) -> int:
    return max(0, min(100, _round(points)))


@lru_cache(maxsize=1024)
def _word(keyword: str) -> re.Pattern[str]:
    # Whole words only, so "us" never matches inside "Russia" and "cto" not in "director".
    return re.compile(rf"(?<![a-z0-9]){re.escape(keyword.lower())}(?![a-z0-9])")


def best_match(text: str | None, rules: Iterable[KeywordRule]) -> KeywordRule | None:
    """The rule whose keyword matches ``text`` most specifically (the longest keyword;
    on a tie, the rule listed first), so "Vice President" is ``vp`` even though it
    contains "president", and "Sales Operations" is revops rather than sales."""
    if not text or not str(text).strip():
        return None
    text = str(text).lower()
    best: tuple[int, KeywordRule] | None = None
    for rule in rules:
        for keyword in rule.match:
            if _word(keyword).search(text) and (best is None or len(keyword) > best[0]):
                best = (len(keyword), rule)
    return best[1] if best else None


def employee_count(value: Any) -> int | None:
    """A head count from a form or a tool: ``250``, ``"1,000"``, ``"51-200"`` (the lower
    bound) or ``"10000+"``; ``None`` when there is no number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value) if math.isfinite(value) and value >= 0 else None
    found = re.search(r"\d+", str(value).replace(",", "").replace("_", "").replace(" ", ""))
    return int(found.group()) if found else None


def _band(employees: int | None, bands: Iterable[EmployeeBand]) -> EmployeeBand | None:
    if employees is None:
        return None
    return next((band for band in bands if band.holds(employees)), None)


_MATCH_MEMO = 50_000


def _memo(policy: PolicySet, name: str) -> dict:
    """One of the policy's own memos, read from pydantic's private store: ``policy._name``
    goes through ``BaseModel.__getattr__`` (~1.3 µs a read, measured; once per event)."""
    return policy.__pydantic_private__[name]


def fit_score(firmographics: Mapping[str, Any], email: str, policy: PolicySet) -> FitScore:
    """How well the contact fits the ideal customer profile of ``policy``.

    ``firmographics`` is either flat (``{"title": …}``) or merged (``{"title": {"value":
    …}}``). One rule per dimension counts (the most specific match); a free-mail address
    costs ``free_mail_penalty``. Rules worth 0 points are not listed as reasons.
    """
    values = firmographic_values(dict(firmographics))
    try:
        key = (tuple(values.get(name) for name in FIRMOGRAPHIC_FIELDS), email_domain(email))
        memo = _memo(policy, "_fit_scores")
        found = memo.get(key)
    except TypeError:  # an unhashable custom value: score it without the memo
        return _fit_score(values, email, policy)
    if found is None:
        if len(memo) > _MATCH_MEMO:
            memo.clear()
        found = memo[key] = _fit_score(values, email, policy)
    return found


def _fit_score(values: Mapping[str, Any], email: str, policy: PolicySet) -> FitScore:
    rules = policy.fit
    reasons: list[Reason] = []

    def add(rule: str, points: int) -> None:
        if points:
            reasons.append(Reason(rule, points))

    matches = _memo(policy, "_fit_matches")
    if len(matches) > _MATCH_MEMO:
        matches.clear()
    for dimension, candidates, value in (
        ("industry", rules.industries, values.get("industry")),
        ("country", rules.countries, values.get("country")),
        ("seniority", rules.seniority, values.get("title")),
        ("department", rules.departments, values.get("title")),
    ):
        key = (dimension, value if value is None or isinstance(value, str) else str(value))
        if key not in matches:
            matches[key] = best_match(value, candidates)
        match = matches[key]
        if match is not None:
            add(f"fit.{dimension}.{match.name}", match.points)
    band = _band(employee_count(values.get("employees")), rules.employees)
    if band is not None:
        add(f"fit.employees.{band.label}", band.points)
    business_email = not is_free_mail(email_domain(email))
    if not business_email:
        add("fit.free_mail", -rules.free_mail_penalty)

    points = _clamp(sum(reason.points for reason in reasons))
    known = frozenset(name for name in FIRMOGRAPHIC_FIELDS if _present(values.get(name)))
    return FitScore(
        points=points,
        reasons=tuple(reasons),
        policy_version=policy.version,
        grade=rules.grade(points),
        business_email=business_email,
        fields=known,
    )


def _present(value: Any) -> bool:
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


def _attr(touch: Any, name: str) -> Any:
    if type(touch) is Touch:  # the usual case, before the costlier ABC check
        return getattr(touch, name)
    if isinstance(touch, Mapping):
        return touch.get(name)
    return getattr(touch, name, None)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def decayed(points: float, age_days: float, half_life_days: float) -> float:
    """``points`` after ``age_days``, halving every ``half_life_days`` (a touch from the
    future counts as now)."""
    return points * 0.5 ** (max(0.0, age_days) / half_life_days)


def signal_of(touch: Any) -> tuple[str, str] | None:
    """``(motion, form_type)`` of an inbound touch, ``(motion, outcome)`` of an outbound
    one; ``None`` for a touch that carries neither."""
    motion = _attr(touch, "motion")
    name = _attr(touch, "form_type") if motion == "inbound" else _attr(touch, "outcome")
    if motion not in ("inbound", "outbound") or not name:
        return None
    return motion, name


def engagement_score(
    touches: Iterable[Any],
    now: datetime,
    policy: PolicySet,
    since: datetime | None = None,
) -> EngagementScore:
    """What the contact did, decayed to ``now``.

    Each touch (a ``Touch`` or a mapping with ``motion``, ``form_type``/``outcome`` and
    ``occurred_at``) is weighed by its own motion's policy: inbound by form type,
    outbound by outcome, ``points * 0.5 ** (age_days / half_life_days)``. Points of one
    signal add up, at most to its cap; the total is clamped to 0–100. ``since`` ignores
    touches before it (a nurtured contact re-qualifies on new engagement only). Use the
    fact's time as ``now`` when replaying, so history scores as it did.
    """
    now = _aware(now)
    since = _aware(since) if since is not None else None
    totals: dict[tuple[str, str], float] = {}
    weights = {motion: policy.for_motion(motion).weights for motion in ("inbound", "outbound")}
    half_life_days = policy.half_life_days
    for touch in touches:
        signal = signal_of(touch)
        occurred_at = _attr(touch, "occurred_at")
        if signal is None or occurred_at is None:
            continue
        occurred_at = _aware(occurred_at)
        if since is not None and occurred_at < since:
            continue
        age_days = (now - occurred_at).total_seconds() / 86_400
        totals[signal] = totals.get(signal, 0.0) + decayed(weights[signal[0]].get(signal[1], 0), age_days,
                                                           half_life_days)

    reasons: list[Reason] = []
    for (motion, name), total in totals.items():
        cap = policy.for_motion(motion).caps.get(name)
        if cap is not None:
            total = min(total, cap)
        kind = "form_type" if motion == "inbound" else "outcome"
        if _round(total):
            reasons.append(Reason(f"{motion}.{kind}.{name}", _round(total)))
    return EngagementScore(
        points=_clamp(sum(reason.points for reason in reasons)),
        reasons=tuple(reasons),
        policy_version=policy.version,
        signals=frozenset(totals),
    )
