"""Money amounts of opportunities, and the expected amount assumed when sales gives none.

``scoring.yaml`` may hold, per motion, the amount an opportunity is expected to bring when
sales accepts it (``sql`` → ``opportunity``) without an amount::

    expected_amounts:
      inbound: 12000
      outbound: 30000
      blended: 20000

Qualification validates the section with the rest of the policy (a mistake stops it at
start with the line named); the pipeline service reads it at start and stores the amount
on the accepted opportunity marked as estimated, until a real amount (a later move that
carries one, a win) replaces it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# what a request and the store hold: never zero or negative, cents at most, and at most 13
# digits before the point. The column is NUMERIC(18, 2), but SQLite stores it as a double and
# every answer and event writes a JSON number: 15 significant digits are what a double keeps
# exactly, so an accepted amount is the amount answered (9,999,999,999,999.99 at most).
Money = Annotated[Decimal, Field(gt=0, max_digits=15, decimal_places=2, allow_inf_nan=False)]


class ExpectedAmounts(BaseModel):
    """The expected amount of an opportunity accepted without one, per motion (none: no default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbound: Money | None = None
    outbound: Money | None = None
    blended: Money | None = None

    def for_motion(self, motion: str) -> Decimal | None:
        """The default of an opportunity of ``motion`` (``None`` when the file sets none)."""
        return getattr(self, motion, None) if motion in ("inbound", "outbound", "blended") else None


NO_EXPECTED_AMOUNTS = ExpectedAmounts()


class ExpectedAmountsError(ValueError):
    """The ``expected_amounts`` section of a scoring file cannot be used."""


def read_expected_amounts(path: str | Path) -> ExpectedAmounts:
    """The ``expected_amounts`` section of the scoring file at ``path`` (empty when absent)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExpectedAmountsError(f"{path}: cannot read the scoring file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ExpectedAmountsError(f"{path}: invalid YAML: {exc}") from exc
    section = data.get("expected_amounts") if isinstance(data, dict) else None
    try:
        return ExpectedAmounts.model_validate(section or {})
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(("expected_amounts", *(str(p) for p in e["loc"]))) + f": {e['msg']}" for e in exc.errors()
        )
        raise ExpectedAmountsError(f"{path}: {problems}") from exc
