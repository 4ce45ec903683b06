"""Pure domain logic of qualification: identity, attribution, policy, scoring, stages.

Values in, values out: nothing here touches a database, a broker or the clock, so every
rule is tested with plain tables (``tests/unit``).
"""
