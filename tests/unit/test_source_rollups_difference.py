"""The sources rollups' difference (``add_difference``), computed model by model, against its
definition: what ``before`` contributed taken away and what ``after`` contributes added
(``Rollups.add``), on random pairs of contact facts, most of them one change apart."""

from __future__ import annotations

import dataclasses
import math
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_store.source_rollups import (
    KEY, METRICS, MODELS, ContactFacts, OpportunityFacts, Rollups, add_difference, stored_rows,
)

TOUCHES = [("cold_email", "", "", "s1"), ("web", "brand", "f-demo", ""), ("cold_call", "", "", "s2")]
credit_chain = st.sampled_from([[(TOUCHES[0], 1.0)], [(TOUCHES[0], 0.5), (TOUCHES[1], 0.5)],
                                [(TOUCHES[1], 0.25), (TOUCHES[2], 0.5), (TOUCHES[1], 0.25)]])
credits = st.one_of(st.just({}), st.dictionaries(st.sampled_from(MODELS), credit_chain, max_size=6))
opportunity = st.builds(OpportunityFacts, st.sampled_from(["sql", "opportunity", "customer", "lost"]),
                        st.sampled_from([None, 1000.0, 2500.5]), st.booleans())
facts = st.builds(
    ContactFacts,
    day=st.sampled_from([date(2025, 12, 31), date(2026, 3, 2), date(2026, 3, 31), date(2026, 4, 1)]),
    hour=st.sampled_from([0, 13, 23]),
    motion=st.sampled_from(["inbound", "outbound", "blended"]),
    reached=st.sampled_from([(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (1, 1, 0, 0, 0), (1, 1, 1, 0, 0), (1, 1, 1, 1, 1)]),
    first=st.sampled_from(TOUCHES), last=st.sampled_from(TOUCHES),
    days_to_qualify=st.sampled_from([None, 0.01, 3.5, 40.0]),
    opportunities=st.lists(opportunity, max_size=2).map(tuple),
    credits=credits,
)
FIELDS = [f.name for f in dataclasses.fields(ContactFacts)]


@st.composite
def pairs(draw):  # noqa: ANN001, ANN201
    before = draw(st.none() | facts)
    if before is None or draw(st.booleans()):
        return before, draw(st.none() | facts)
    changed = {}  # one or two fields changed: the common case, where most models stay put
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True)):
        changed[name] = getattr(draw(facts), name)
    return before, dataclasses.replace(before, **changed)


def _rows(rollups: Rollups) -> dict[tuple, tuple[float, ...]]:
    """The stored rows' values by key (sums, then the histogram's cells)."""
    sums, days = stored_rows(rollups)
    return {**{("sums", *(r[k] for k in KEY)): tuple(r[m] for m in METRICS) for r in sums},
            **{("days", *(r[k] for k in KEY), r["bucket"]): (r["weight"], r["days"]) for r in days}}


@settings(max_examples=400, deadline=None)
@given(st.lists(pairs(), min_size=1, max_size=4))
def test_difference_is_after_less_before(changes) -> None:  # noqa: ANN001
    fast, reference = Rollups(), Rollups()
    for before, after in changes:
        add_difference(fast, before, after)
        if before != after:
            if before is not None:
                reference.add(before, -1.0)
            if after is not None:
                reference.add(after, 1.0)
    got, want = _rows(fast), _rows(reference)
    # a row the reference takes away and adds back may keep a rounding residue (~1e-13): a
    # row missing on one side reads as zeros
    for key in set(got) | set(want):
        width = len(got.get(key) or want[key])
        a, b = got.get(key, (0.0,) * width), want.get(key, (0.0,) * width)
        assert all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(a, b)), (key, a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(pairs(), min_size=1, max_size=4))
def test_every_difference_is_kept_at_every_grain(changes) -> None:  # noqa: ANN001
    """Each grain's rows add up to the same sums per key: a range may read any of them."""
    rollups = Rollups()
    for before, after in changes:
        add_difference(rollups, before, after)
    per_grain: dict[str, dict[tuple, list[float]]] = {}
    sums, days = stored_rows(rollups)
    for row in sums:
        assert row["hour"] == 0 or row["grain"] == "h"
        key = tuple(row[k] for k in KEY if k not in ("grain", "day", "hour"))
        cell = per_grain.setdefault(row["grain"], {}).setdefault(key, [0.0] * len(METRICS))
        for i, metric in enumerate(METRICS):
            cell[i] += row[metric]
    grains = [per_grain.get(grain, {}) for grain in ("h", "d", "m", "y")]
    for key in set().union(*grains):
        values = [grain.get(key, [0.0] * len(METRICS)) for grain in grains]
        assert all(math.isclose(a, b, abs_tol=1e-9) for other in values[1:] for a, b in zip(values[0], other)), key
    assert {row["grain"] for row in days} <= {"h", "d", "m", "y"}
