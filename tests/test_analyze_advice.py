"""Each advice rule fires on its evidence and stays silent without it."""

from pathlib import Path

import numpy as np
import pytest

from hybridscope.analyze import advice as adv
from hybridscope.table import Column, Table


def tab(name, **cols):
    names = list(cols)
    n = len(cols[names[0]])
    return Table(name, tuple(Column(c) for c in names), [tuple(cols[c][i] for c in names) for i in range(n)])


def expert_steps(imb, comm):
    return tab("expert_steps", step=list(range(len(imb))), imbalance=imb, moe_comm_ns=comm,
               latency_ns=[0] * len(imb))


SKEWED = expert_steps([1.1, 1.2, 1.1, 1.15, 1.1, 4.0, 4.2, 3.9], [110, 100, 100, 105, 100, 600, 650, 580])


def test_routing_penalty_fires_at_the_jump():
    a = adv.routing_penalty(SKEWED, jump=1.5, min_rho=0.3, min_group=3)
    assert a is not None
    n = a.numbers
    assert n["threshold"] == pytest.approx(1.2) and n["next_level"] == pytest.approx(3.9)
    assert (n["n_above"], n["n_below"]) == (3, 5)
    assert n["p99_above_ns"] == pytest.approx(np.percentile([600, 650, 580], 99))
    assert n["p99_below_ns"] == pytest.approx(np.percentile([100, 110, 100, 105, 100], 99))
    assert (n["p50_above_ns"], n["p50_below_ns"]) == (600, 100) and n["jump"] == pytest.approx(6.0)
    assert (n["slowest_above"], n["slowest"]) == (1, 1)  # p90 of the 8 steps: 1 step at or above it
    # at stake: the upper group's comm beyond the lower group's p50 (100)
    assert a.at_stake_ns == pytest.approx(500 + 550 + 480)
    assert "1.20" in a.recommendation


def test_routing_penalty_silent_without_a_jump_or_data():
    flat = expert_steps([1.1, 1.2, 1.1, 1.15, 1.1, 4.0, 4.2, 3.9], [100, 110, 100, 105, 100, 104, 101, 103])
    assert adv.routing_penalty(flat, jump=1.5, min_rho=0.3, min_group=3) is None
    assert adv.routing_penalty(SKEWED, jump=10.0, min_rho=0.3, min_group=3) is None
    no_comm = expert_steps([1.1] * 4 + [4.0] * 4, [None] * 8)
    assert adv.routing_penalty(no_comm, jump=1.5, min_rho=0.3, min_group=3) is None
    assert adv.routing_penalty(None, jump=1.5, min_rho=0.3, min_group=3) is None


def test_routing_penalty_judges_the_groups_by_their_medians():
    # the lower group's one noisy step (450: a descheduled host) makes its p99 450, so a p99 ratio
    # would be 1.4x and the rule would come and go with that one step; the medians (600 vs 100) are
    # the workload's. The steps hand-computed: lower = the 8 at imbalance <= 1.3, upper = the 4 at >= 3.9
    lower_imb = [1.1, 1.2, 1.1, 1.15, 1.1, 1.3, 1.25, 1.2]
    lower_comm = [100, 110, 90, 450, 100, 105, 95, 100]
    t = expert_steps(lower_imb + [4.0, 4.2, 3.9, 4.1], lower_comm + [600, 650, 580, 600])
    a = adv.routing_penalty(t, jump=1.5, min_rho=0.3, min_group=3)
    assert a is not None
    n = a.numbers
    assert (n["threshold"], n["next_level"]) == (1.3, 3.9)
    assert n["p50_below_ns"] == pytest.approx(100) and n["p50_above_ns"] == pytest.approx(600)
    assert n["p99_below_ns"] / n["p50_below_ns"] > 4  # the noisy step is in the lower group's p99
    assert "p50 600 ns vs 100 ns" in a.evidence and "p99" in a.evidence


def test_routing_penalty_split_is_not_pulled_by_one_extreme_step():
    # one 1-second step among the balanced ones: least squares (on times or their logs) cuts right
    # after it to give it a group of its own; on ranks it is one slow step, and the cut stays
    # between the two routing regimes
    imb = [1.1, 1.2, 1.12, 1.15, 1.1, 1.3, 1.25, 1.2, 1.28, 4.0, 4.2, 3.9, 4.1]
    comm = [100, 110, 90, 1_000_000_000, 100, 95, 95, 100, 105, 600, 650, 580, 600]
    a = adv.routing_penalty(expert_steps(imb, comm), jump=1.5, min_rho=0.3, min_group=3)
    assert a is not None and (a.numbers["threshold"], a.numbers["next_level"]) == (1.3, 3.9)
    order = np.argsort(imb, kind="stable")
    ly = np.log(np.array(comm, dtype=float))[order]
    sse = {k: ly[:k].var() * k + ly[k:].var() * (13 - k) for k in (4, 9)}  # cut after 1.15 / after 1.3
    assert sse[4] < sse[9]  # what a least-squares cut would have picked


def test_best_split_is_the_largest_mann_whitney_z():
    # hand-computed: y ranks by x order [1, 3, 2, 5, 4, 6]; cut after 3 steps: U = (5+4+6) - 6 = 9
    # (all 9 pairs), z = (9 - 4.5) / sqrt(9 * 7 / 12) = 1.964; after 2: U = 17 - 10 = 7 of 8,
    # z = 3 / sqrt(8 * 7 / 12) = 1.389; after 4: U = 10 - 3 = 7 of 8, same 1.389
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([10.0, 30.0, 20.0, 50.0, 40.0, 60.0])
    assert adv.best_split(x, y, 2) == (3.0, 4.0)
    assert adv.best_split(x, y, 3) == (3.0, 4.0)
    assert adv.best_split(np.array([1.0, 1.0, 1.0, 1.0]), y[:4], 1) is None  # no distinct x to cut between


def test_routing_penalty_cuts_a_real_hotspots_run_between_its_regimes():
    # a real run A of benchmarks/fix_ab.py (tests/fixtures/hotspots_seed0_steps.csv): 72 balanced
    # steps at imbalance 1.29-1.50, 24 skewed ones at 2.14-2.48, some of which waited no longer than
    # balanced steps (moe_comm is bimodal there). The cut belongs in the gap: cutting inside the
    # skewed steps (2.22, what least absolute deviations on log times chose) capped nothing useful
    path = Path(__file__).parent / "fixtures" / "hotspots_seed0_steps.csv"
    rows = [line.split(",") for line in path.read_text().splitlines() if line[:1].isdigit()]
    imb, comm = [float(a) for a, _ in rows], [int(b) for _, b in rows]
    a = adv.routing_penalty(expert_steps(imb, comm), jump=1.5, min_rho=0.3, min_group=3)
    assert a is not None
    assert a.numbers["threshold"] == max(v for v in imb if v < 2) and a.numbers["next_level"] == min(v for v in imb if v > 2)
    assert (a.numbers["n_below"], a.numbers["n_above"]) == (72, 24)


def test_routing_penalty_silent_when_only_the_tail_moves_by_chance():
    # upper group: one slow step among typical ones -> its median is the lower group's: no advice
    imb = [1.1, 1.2, 1.1, 1.15, 1.1, 1.3, 4.0, 4.2, 3.9, 4.1]
    comm = [100, 110, 90, 105, 100, 95, 100, 105, 900, 98]
    assert adv.routing_penalty(expert_steps(imb, comm), jump=1.5, min_rho=0.0, min_group=3) is None


def pairs(kind="overlap", n=3, total=5_000):
    return tab("conflict_pairs", kind=[kind], scope=["communicator"], stream_a=[11], stream_b=[12],
               module_a=["L1.dispatch"], module_b=["L1.combine"], n=[n], total_ns=[total])


def test_stream_pairing():
    a = adv.stream_pairing(pairs())
    assert a.at_stake_ns == 5_000 and "L1.dispatch and L1.combine" in a.recommendation
    assert a.numbers["n"] == 3
    assert "back to back" in adv.stream_pairing(pairs("serialized")).recommendation
    assert adv.stream_pairing(pairs().with_rows([])) is None
    assert adv.stream_pairing(None) is None


def load(cfs):
    return tab("expert_load", layer_index=[1] * len(cfs), expert=list(range(len(cfs))), capacity_factor_p99=cfs)


def tail(rows):
    """expert_tail rows (layer, expert, cf_p99, tail_load, other_load, layer_gain_ns, moves)."""
    cols = dict(zip(("layer_index", "expert", "capacity_factor_p99", "tail_load", "other_load", "layer_gain_ns",
                     "moves_tail"), zip(*rows)))
    cols["load_ratio"] = [t / o for t, o in zip(cols["tail_load"], cols["other_load"])]
    return tab("expert_tail", **{k: list(v) for k, v in cols.items()})


def test_capacity_factor_only_for_experts_that_move_their_layers_tail():
    t = tail([(1, 0, 2.3, 3.0, 1.5, 400, "yes"), (1, 1, 1.6, 2.0, 1.0, 400, "yes"),
              (2, 5, 3.0, 1.0, 2.0, 900, "no"),  # hot, but lighter in its layer's slow steps
              (3, 2, 1.2, 2.0, 1.0, 700, "yes")])  # moves the tail, below the threshold
    a = adv.capacity_factor(t, threshold=1.5)
    assert a.numbers["capacity_factors"] == {"1/0": 2.5, "1/1": 1.75}
    assert a.at_stake_ns == 400  # layer 1's tail time, once for its two experts
    many = tail([(li, 0, 2.0, 2.0, 1.0, 100 * li, "yes") for li in range(1, 9)])
    a = adv.capacity_factor(many, threshold=1.5, max_listed=5)
    assert a.recommendation.endswith("layer 4 expert 0: 2 and 3 more.") and "layer 8 expert 0" in a.recommendation
    assert a.at_stake_ns == sum(100 * li for li in range(1, 9))
    assert adv.capacity_factor(tail([(1, 0, 2.3, 1.0, 1.5, 400, "no")]), threshold=1.5) is None


def bound(verdicts, phases):
    n = len(verdicts)
    return tab("launch_bound", rank=[0] * n, phase=phases, launch_bound=verdicts, idle_ns=[40_000] * n,
               median_kernel_ns=[2_000] * n, median_gap_ns=[10_000] * n, gap_ge_kernel_pct=[80.0] * n)


def test_cuda_graphs_only_for_launch_bound_decode():
    a = adv.cuda_graphs(bound(["yes", "no"], ["decode", "prefill"]))
    assert a.at_stake_ns == 40_000 and "decode" in a.recommendation
    two = adv.cuda_graphs(bound(["yes", "yes"], ["decode", "decode"]))  # two ranks: per rank, not summed
    assert two.at_stake_ns == 40_000
    assert adv.cuda_graphs(bound(["no", "yes"], ["decode", "prefill"])) is None
    assert adv.cuda_graphs(bound(["no"], ["decode"])) is None


def ov(pct):
    return tab("overlap", rank=[0], exposed_ns=[190], comm_ns=[250], exposed_comm_pct=[76.0], exposed_wall_pct=[pct])


def test_comm_overlap():
    assert adv.comm_overlap(ov(19.0), exposed_pct=5.0).at_stake_ns == 190
    assert adv.comm_overlap(ov(4.9), exposed_pct=5.0) is None


def sites(idle, others=((10, 20),)):
    """gap_sites with the top site (10 gaps, `idle` ns) and other sites given as (n_gaps, idle_ns)."""
    n = [10] + [o[0] for o in others]
    return tab("gap_sites", before=["moe_comm"] + ["mamba"] * len(others), after=["mamba"] * len(n),
               n_gaps=n, idle_ns=[idle] + [o[1] for o in others], p50_ns=[1.0] * len(n), p99_ns=[2.0] * len(n))


def test_host_stall():
    a = adv.host_stall(sites(100), 1000, stall_pct=5.0, stand_out=1.5)
    assert a.numbers["share"] == pytest.approx(10.0) and "moe_comm and mamba" in a.recommendation
    # mean gap 10 vs all gaps 120/20 = 6: 1.67x, not a stall that stands out
    assert a.numbers["stands_out"] == pytest.approx(10 / 6)
    assert adv.host_stall(sites(100), 1000, stall_pct=5.0, stand_out=2.0) is None
    a = adv.host_stall(sites(100, others=((40, 20),)), 1000, stall_pct=5.0, stand_out=2.0)
    assert a.numbers["stands_out"] == pytest.approx(10 / (120 / 50))
    assert adv.host_stall(sites(40, others=((40, 20),)), 1000, stall_pct=5.0, stand_out=1.0) is None  # 4 %
    assert adv.host_stall(sites(100), None, stall_pct=5.0) is None
    two = adv.host_stall(sites(200, others=((40, 20),)), 1000, stall_pct=5.0, n_ranks=2)  # 100 per rank
    assert two.at_stake_ns == 100 and two.numbers["share"] == pytest.approx(10.0)


def test_advice_ranks_by_gain_and_keeps_only_material_gains():
    moe = {"expert_steps": SKEWED, "conflict_pairs": pairs(total=2_000),
           "expert_tail": tail([(1, 0, 2.3, 3.0, 1.5, 500, "yes")]), "overlap": ov(19.0)}
    t = adv.advice(moe, wall_ns=10_000)
    assert t.column("rule") == ["stream_pairing", "routing_penalty", "capacity_factor", "comm_overlap"]  # 2000, 1530, 500, 190
    assert t.column("rank") == [1, 2, 3, 4]
    assert t.record(rule="comm_overlap")["at_stake_pct"] == pytest.approx(1.9)
    assert "MoE communication" in t.record(rule="comm_overlap")["recommendation"]
    assert set(t.meta["numbers"]) == set(t.column("rule"))
    assert all(v is not None for v in t.column("at_stake_ns"))  # every item names its expected gain
    big = adv.advice(moe, wall_ns=100_000)  # 500 ns and 190 ns are 0.5 % and 0.19 % of it: not material
    assert big.column("rule") == ["stream_pairing", "routing_penalty"]
    assert big.meta["not_material"] == ["capacity_factor", "comm_overlap"]
    assert adv.advice(moe, wall_ns=None).rows == ()  # no window: materiality unknown, nothing claimed
    assert len(adv.advice({}, wall_ns=10_000)) == 0


def test_moe_advice_needs_moe_layers():
    dp = {"expert_steps": SKEWED, "conflict_pairs": pairs(total=2_000), "overlap": ov(19.0),
          "decompose_layer_type": tab("decompose_layer_type", layer_type=["all", "comm", "mlp"])}
    t = adv.advice(dp, wall_ns=10_000)
    assert t.column("rule") == ["comm_overlap"] and not t.meta["moe"]
    assert "MoE" not in t.record(rule="comm_overlap")["recommendation"]
