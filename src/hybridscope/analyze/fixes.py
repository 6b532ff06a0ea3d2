"""From advice to engine knobs: what `hybridscope advise --emit fixes.toml` recommends, with the
evidence beside each value (docs/analyses.md, "fixes"; the knobs: docs/engine.md, "Fixes").

One fix per advice rule that has an engine knob:
- routing_penalty -> ``route_imbalance_cap`` = the imbalance (max/mean tokens per expert) below
  which moe_comm stayed low (the rule's lower group's largest imbalance), at least 1;
- stream_pairing -> ``a2a_separate_streams`` = true;
- capacity_factor -> ``capacity_overrides``: per (layer, expert) the factor the rule found that
  expert needed at p99 of steps (rounded up to 0.25).
Other rules (cuda_graphs, comm_overlap, host_stall) have no knob in the reference engine and are
listed as comments only. A pure function of the advice table: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridscope.table import Table

KNOB_OF_RULE = {"routing_penalty": "route_imbalance_cap", "stream_pairing": "a2a_separate_streams",
                "capacity_factor": "capacity_overrides"}


@dataclass(frozen=True)
class Fix:
    rule: str
    knob: str | None          # None: advice without an engine knob (kept as a comment)
    value: object             # float, bool, or {"LAYER/EXPERT": factor}
    recommendation: str
    evidence: str
    at_stake_ns: float | None


def fixes_from_advice(advice: Table) -> list[Fix]:
    """The advice table (analyze.advice) -> one Fix per advice row, in the advice's order."""
    numbers = advice.meta.get("numbers", {})
    out = []
    for r in advice.to_records():
        rule, n = r["rule"], numbers.get(r["rule"], {})
        knob, value = KNOB_OF_RULE.get(rule), None
        if rule == "routing_penalty":
            value = max(1.0, round(float(n["threshold"]), 2))
        elif rule == "stream_pairing":
            value = True
        elif rule == "capacity_factor":
            value = {str(k): float(v) for k, v in n["capacity_factors"].items()}
        out.append(Fix(rule, knob, value, r["recommendation"], r["evidence"], r.get("at_stake_ns")))
    return out
