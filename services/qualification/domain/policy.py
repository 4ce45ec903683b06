"""The qualification policy: a versioned, declarative file operators edit
(``deploy/config/scoring.yaml``), validated into frozen pydantic models.

A mistake in the file is a ``PolicyError`` that names the file, the line and the field,
so an operator fixes it without reading code; a policy that loads is a complete one.

Shape (see the shipped file for a commented example)::

    version: "2026-11-25.1"        # recorded on every score and stage change
    half_life_days: 30             # engagement halves every N days
    attribution_lookback_days: 90  # counting touches occurred at most N days before qualifying
    fit:                           # who they are (ICP), 0–100
      industries:  [{name, points, match: [keywords]}]
      employees:   [{min, max, points}]          # max omitted = no upper bound
      countries:   [{name, points, match: [codes and names]}]
      seniority:   [{name: c_level|vp|director|manager|individual_contributor, points, match}]
      departments: [{name, points, match}]
      free_mail_penalty: 20                      # subtracted for a free-mail address
      grades: {A: 80, B: 65, C: 50, D: 35, E: 20, F: 0}  # lowest score per grade
    inbound:                       # weights by form_type
      weights: {demo_request: 60, …}
      caps: {content_download: 36}               # most points one signal may add
      lead: [criterion…]   mql: [criterion…]   sql: [criterion…]
    outbound:                      # weights by touch outcome
      weights: {meeting_booked: 100, …}
      caps: {opened: 10, clicked: 20}
      lead: […]  mql: […]  sql: […]
    expected_amounts:              # optional: amount of an opportunity accepted without one
      inbound: 12000               # per motion (inbound, outbound, blended); see shared/amounts.py

A stage is reached when ANY of its criteria holds; a criterion holds when ALL of its
conditions do: ``min_fit``, ``min_engagement``, ``any_signal`` (at least one touch of
these form types / outcomes), ``business_email`` and ``fields`` (firmographics known).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, PrivateAttr, StrictStr, ValidationError, field_validator, model_validator,
)

from services.qualification.domain import yaml_config

from shared.amounts import NO_EXPECTED_AMOUNTS, ExpectedAmounts

FORM_TYPES = (
    "demo_request", "contact_sales", "pricing", "trial_signup", "webinar",
    "content_download", "newsletter", "event", "other",
)
OUTCOMES = (
    "sent", "delivered", "opened", "clicked", "replied", "positive_reply", "negative_reply",
    "bounced", "unsubscribed", "connected", "voicemail", "no_answer", "meeting_booked",
    "not_interested",
)
SENIORITY_LEVELS = ("c_level", "vp", "director", "manager", "individual_contributor")
GRADES = ("A", "B", "C", "D", "E", "F")

FormType = Literal[
    "demo_request", "contact_sales", "pricing", "trial_signup", "webinar",
    "content_download", "newsletter", "event", "other",
]
Outcome = Literal[
    "sent", "delivered", "opened", "clicked", "replied", "positive_reply", "negative_reply",
    "bounced", "unsubscribed", "connected", "voicemail", "no_answer", "meeting_booked",
    "not_interested",
]
FirmographicField = Literal[
    "company", "title", "industry", "employees", "country", "website", "phone",
    "first_name", "last_name", "linkedin_url",
]
Grade = Literal["A", "B", "C", "D", "E", "F"]
Points = Annotated[int, Field(ge=-100, le=100)]
Threshold = Annotated[int, Field(ge=0, le=100)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9_\-]+$")]
Keywords = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class PolicyError(ValueError):
    """A policy file that cannot be used; ``problems`` lists ``(line, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[int | None, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeywordRule(_Strict):
    """Points when the contact's value matches one of ``match`` (whole words, any case)."""

    name: Name
    points: Points
    match: Keywords


class SeniorityRule(KeywordRule):
    name: Literal["c_level", "vp", "director", "manager", "individual_contributor"]


class EmployeeBand(_Strict):
    """Points for a company size from ``min`` to ``max`` employees (inclusive)."""

    min: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)] | None = None
    points: Points

    @model_validator(mode="after")
    def _ordered(self) -> EmployeeBand:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self

    def holds(self, employees: int) -> bool:
        return self.min <= employees and (self.max is None or employees <= self.max)

    @property
    def label(self) -> str:
        return f"{self.min}+" if self.max is None else f"{self.min}-{self.max}"


class FitPolicy(_Strict):
    industries: list[KeywordRule] = []
    employees: list[EmployeeBand] = []
    countries: list[KeywordRule] = []
    seniority: list[SeniorityRule] = []
    departments: list[KeywordRule] = []
    free_mail_penalty: Annotated[int, Field(ge=0, le=100)] = 0
    grades: dict[Grade, Threshold]

    @field_validator("employees")
    @classmethod
    def _bands_do_not_overlap(cls, bands: list[EmployeeBand]) -> list[EmployeeBand]:
        ordered = sorted(bands, key=lambda band: band.min)
        for lower, upper in zip(ordered, ordered[1:]):
            if lower.max is None or lower.max >= upper.min:
                raise ValueError(f"employee bands {lower.label} and {upper.label} overlap")
        return bands

    @field_validator("grades")
    @classmethod
    def _grades_descend_to_zero(cls, grades: dict[str, int]) -> dict[str, int]:
        ordered = [grades[letter] for letter in GRADES if letter in grades]
        if not ordered:
            raise ValueError("at least one grade is needed")
        if any(higher <= lower for higher, lower in zip(ordered, ordered[1:])):
            raise ValueError("grade thresholds must fall strictly from A to F")
        if ordered[-1] != 0:
            raise ValueError("the lowest grade must start at 0 so every score has a grade")
        return grades

    def grade(self, points: int) -> str:
        """The grade of a fit score: the best letter whose threshold it reaches."""
        for letter in GRADES:
            if letter in self.grades and points >= self.grades[letter]:
                return letter
        return GRADES[-1]  # unreachable: the lowest grade starts at 0


class _Criterion(_Strict):
    name: Name
    min_fit: Threshold = 0
    min_engagement: Threshold = 0
    business_email: bool = False
    fields: list[FirmographicField] = []


class InboundCriterion(_Criterion):
    any_signal: list[FormType] = []


class OutboundCriterion(_Criterion):
    any_signal: list[Outcome] = []


class InboundPolicy(_Strict):
    """Inbound qualification: engagement weighs each form by its ``form_type``."""

    weights: dict[FormType, Points]
    caps: dict[FormType, Threshold] = {}
    lead: list[InboundCriterion] = []
    mql: Annotated[list[InboundCriterion], Field(min_length=1)]
    sql: Annotated[list[InboundCriterion], Field(min_length=1)]


class OutboundPolicy(_Strict):
    """Outbound qualification: engagement weighs each touch by its ``outcome``."""

    weights: dict[Outcome, Points]
    caps: dict[Outcome, Threshold] = {}
    lead: list[OutboundCriterion] = []
    mql: Annotated[list[OutboundCriterion], Field(min_length=1)]
    sql: Annotated[list[OutboundCriterion], Field(min_length=1)]


MotionPolicy = InboundPolicy | OutboundPolicy


class PolicySet(_Strict):
    """One version of the qualification policy: fit rules, the half-life, and one
    policy per motion."""

    version: Annotated[StrictStr, Field(min_length=1)]
    half_life_days: Annotated[float, Field(gt=0)]
    # attribution: an opportunity's counting touches occurred at most this long before it
    # qualified (the spec's lookback; domain/attribution_models.py)
    attribution_lookback_days: Annotated[float, Field(gt=0)] = 90
    fit: FitPolicy
    inbound: InboundPolicy
    outbound: OutboundPolicy
    # read by the pipeline service when sales accepts an opportunity without an amount
    expected_amounts: ExpectedAmounts = NO_EXPECTED_AMOUNTS
    # (dimension, value) → the fit rule it matches: titles and industries repeat across
    # contacts and every event re-scores its contact (bounded; see scoring.fit_score)
    _fit_matches: dict = PrivateAttr(default_factory=dict)
    # (profile, email domain) → the fit score: a touch does not change who the contact is,
    # so most events score a profile seen before (bounded; see scoring.fit_score)
    _fit_scores: dict = PrivateAttr(default_factory=dict)

    def for_motion(self, motion: str) -> MotionPolicy:
        """The policy of ``inbound`` or ``outbound``."""
        if motion == "inbound":
            return self.inbound
        if motion == "outbound":
            return self.outbound
        raise ValueError(f"no policy for motion {motion!r}")


def load_policies(path: str | Path) -> PolicySet:
    """The policy in the YAML file at ``path``; ``PolicyError`` naming the line otherwise."""
    path = Path(path)
    text = yaml_config.read_text(path, PolicyError, what="policy")
    return parse_policies(text, str(path))


def parse_policies(text: str, name: str = "<policy>") -> PolicySet:
    """The policy in YAML ``text`` (``name`` is used in error messages)."""
    root, data = yaml_config.read_mapping(text, name, PolicyError, what="policy",
                                          shape="version, fit, inbound and outbound")
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        problems = [(yaml_config.line_of(root, tuple(e["loc"])), yaml_config.describe(e, yaml_config.dotted(e["loc"])))
                    for e in exc.errors()]
        lines = "\n".join(f"  {name}:{line}: {message}" for line, message in problems)
        raise PolicyError(
            f"{name}:{problems[0][0]}: invalid policy ({len(problems)} problem(s)):\n{lines}", problems
        ) from exc
