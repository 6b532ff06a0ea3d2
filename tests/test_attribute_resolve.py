"""Resolution on synthetic events: scopes win, threads, correlations, graphs, collectives, rules.

Every case places annotation ranges and launches by hand on a thread timeline (ns) and states the
expected attribution of each GPU event.
"""

from __future__ import annotations

import itertools

import pytest
from factories import add_events, add_run, new_store

from hybridscope.attribute import attribute_run
from hybridscope.attribute.vocab import LAYER_TYPES
from hybridscope.errors import BadInput
from hybridscope.store import db

_corr = itertools.count(1000)


@pytest.fixture
def con(tmp_path):
    c = new_store(tmp_path / "a.duckdb")
    yield c
    c.close()


def scope(con, run, name, t0, t1, *, tid=1, rank=0, source="annotation", kind="user_annotation"):
    add_events(con, run, [t1 - t0], name=name, source=source, kind=kind, ts_ns=[t0], pid=1, tid=tid, rank=rank)


def frame(con, run, name, t0, t1, *, tid=1):
    scope(con, run, f"nn.Module: {name}", t0, t1, tid=tid, source="cpu", kind="python")


def gpu(con, run, name, t_launch, *, tid=1, kind="kernel", launch="cudaLaunchKernel", n=1, rank=0,
        corr=None) -> int:
    """A launch at `t_launch` on thread `tid` and `n` GPU events sharing its correlation."""
    corr = next(_corr) if corr is None else corr
    if t_launch is not None:
        add_events(con, run, [5], name=launch, source="cuda_api", kind="runtime", ts_ns=[t_launch],
                   pid=1, tid=tid, correlation=corr, rank=rank)
    names = name if isinstance(name, list) else [name] * n
    add_events(con, run, [100] * len(names), name=names, kind=kind, ts_ns=[(t_launch or 0) + 50] * len(names),
               pid=0, tid=7, correlation=corr, rank=rank)
    return corr


def attributed(con, run, rank=None):
    with db.transaction(con):
        summary = attribute_run(con, run, rank=rank)
    rows = con.execute(
        "SELECT name, layer_type, attr_method, layer_index, module, step, scope_id, correlation FROM events"
        " WHERE run_id = ? AND source = 'cuda' ORDER BY rank, event_id", [run]).fetchall()
    return summary, rows


def by_name(rows):
    return {r[0]: r[1:] for r in rows}


def test_nested_scopes_innermost_typed_wins_and_step(con):
    run = add_run(con)
    scope(con, run, "step#4", 0, 10_000)
    scope(con, run, "layers.3", 100, 9_000)           # block: index only
    scope(con, run, "layers.3.mixer", 200, 5_000)     # index, no type
    scope(con, run, "mamba", 300, 4_000)              # type
    scope(con, run, "norm", 5_100, 6_000)             # weak, not inside a typed scope
    gpu(con, run, "k_mamba", 350)
    gpu(con, run, "k_mixer_only", 4_500)
    gpu(con, run, "k_norm", 5_500)
    gpu(con, run, "k_step_only", 9_500)
    _, rows = attributed(con, run)
    got = by_name(rows)
    assert got["k_mamba"][:5] == ("mamba", "scope", 3, "mamba", 4)
    assert got["k_mixer_only"][:5] == ("other", "none", 3, "layers.3.mixer", 4)
    assert got["k_norm"][:5] == ("norm", "scope", 3, "norm", 4)
    assert got["k_step_only"][:5] == ("other", "none", None, None, 4)


def test_weak_types_yield_to_an_enclosing_strong_type(con):
    run = add_run(con)
    frame(con, run, "NemotronHMamba2Mixer_0", 0, 1_000)
    frame(con, run, "Zamba2RMSNormGated_0", 100, 500)  # gated norm inside the mixer -> mamba
    frame(con, run, "NemotronHMoE_0", 2_000, 3_000)
    frame(con, run, "NemotronHMLP_0", 2_100, 2_900)    # shared expert MLP inside MoE -> moe_experts
    gpu(con, run, "k_gated_norm", 200)
    gpu(con, run, "k_shared", 2_200)
    got = by_name(attributed(con, run)[1])
    assert got["k_gated_norm"][:2] == ("mamba", "scope")
    assert got["k_shared"][:2] == ("moe_experts", "scope")


def test_scopes_belong_to_their_thread(con):
    run = add_run(con)
    scope(con, run, "self_attn", 0, 1_000, tid=1)
    scope(con, run, "moe.experts", 0, 1_000, tid=2)
    gpu(con, run, "k_t1", 500, tid=1)
    gpu(con, run, "k_t2", 500, tid=2)
    gpu(con, run, "k_t3", 500, tid=3)  # a thread with no scopes
    got = by_name(attributed(con, run)[1])
    assert got["k_t1"][:2] == ("attention", "scope")
    assert got["k_t2"][:2] == ("moe_experts", "scope")
    assert got["k_t3"][:2] == ("other", "none")


def test_half_open_ranges_at_the_boundaries(con):
    run = add_run(con)
    scope(con, run, "self_attn", 1_000, 2_000)
    scope(con, run, "moe.router", 2_000, 3_000)
    gpu(con, run, "k_at_start", 1_000)
    gpu(con, run, "k_at_end", 2_000)  # the attention range is over, the router's has begun
    gpu(con, run, "k_after", 3_000)
    got = by_name(attributed(con, run)[1])
    assert got["k_at_start"][0] == "attention"
    assert got["k_at_end"][0] == "moe_router"
    assert got["k_after"][:2] == ("other", "none")


def test_correlation_join_and_missing_launch(con):
    run = add_run(con)
    scope(con, run, "self_attn", 0, 1_000)
    gpu(con, run, "selective_scan_fwd_kernel", 500)      # scope beats the name
    gpu(con, run, "selective_scan_fwd_kernel_nolaunch", None)  # no launch: name rule
    gpu(con, run, "Memcpy DtoD (Device -> Device)", 2_000, kind="memcpy")
    gpu(con, run, "Memset (Device)", 600, kind="memset")  # inside the attention scope
    rows = attributed(con, run)[1]
    got = by_name(rows)
    assert got["selective_scan_fwd_kernel"][:2] == ("attention", "scope")
    assert got["selective_scan_fwd_kernel_nolaunch"][:2] == ("mamba", "name")
    assert got["Memcpy DtoD (Device -> Device)"][:2] == ("memory", "name")
    assert got["Memset (Device)"][:2] == ("attention", "scope")


def test_collectives_inside_and_outside_moe(con):
    run = add_run(con)
    scope(con, run, "step#0", 0, 10_000)
    scope(con, run, "moe.dispatch", 100, 1_000)
    scope(con, run, "nccl:all_to_all", 200, 900)  # no meaning of its own
    scope(con, run, "self_attn", 2_000, 3_000)
    gpu(con, run, "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", 300)
    gpu(con, run, "ncclKernel_AllReduce_RING_LL_Sum_bfloat16", 2_500)  # TP all-reduce in attention
    gpu(con, run, "ncclSymkDevKernel_AllGather", 5_000)                # outside every layer
    got = {r[0].split("(")[0]: r[1:] for r in attributed(con, run)[1]}
    dispatch_id = con.execute("SELECT scope_id FROM scopes WHERE name = 'moe.dispatch'").fetchall()[0][0]
    assert got["ncclDevKernel_SendRecv"][:2] == ("moe_comm", "scope")
    assert got["ncclDevKernel_SendRecv"][5] == dispatch_id  # the MoE scope, not the nccl:* range
    assert got["ncclKernel_AllReduce_RING_LL_Sum_bfloat16"][:2] == ("comm", "name")
    assert got["ncclSymkDevKernel_AllGather"][:2] == ("comm", "name")


def test_graph_replays_are_named_not_scoped(con):
    run = add_run(con)
    scope(con, run, "step#2", 0, 10_000)
    scope(con, run, "mamba", 100, 9_000)  # would wrongly claim every node
    corr = gpu(con, run, ["flash_fwd_kernel", "_chunk_scan_fwd_kernel", "nvjet_gemm"], 500, launch="cudaGraphLaunch")
    gpu(con, run, "single_node_graph", 600, launch="cudaGraphLaunch_v10000")  # one node: the launch name says graph
    gpu(con, run, "eager_kernel", 700)
    summary, rows = attributed(con, run)
    got = by_name(rows)
    assert got["flash_fwd_kernel"] == ("attention", "graph", None, None, 2, None, corr)
    assert got["_chunk_scan_fwd_kernel"][:2] == ("mamba", "graph")
    assert got["nvjet_gemm"][:2] == ("other", "graph")
    assert got["single_node_graph"][:2] == ("other", "graph")
    assert got["eager_kernel"][:2] == ("mamba", "scope")
    assert summary.events_by_method == {"graph": 4, "scope": 1}


def test_python_frames_blocks_ranked_by_first_appearance(con):
    """Jamba-like: two decoder-layer classes, so the `_N` suffix is not the layer index."""
    run = add_run(con)
    frame(con, run, "JambaForCausalLM_0", 0, 100_000)
    frame(con, run, "JambaModel_0", 10, 90_000)
    layers = ["JambaMambaDecoderLayer_0", "JambaAttentionDecoderLayer_0", "JambaMambaDecoderLayer_1"]
    inner = ["JambaMambaMixer_0", "JambaAttention_0", "JambaMambaMixer_1"]
    for i, (blk, mix) in enumerate(zip(layers, inner)):
        t = 1_000 + i * 10_000
        frame(con, run, blk, t, t + 9_000)
        frame(con, run, mix, t + 100, t + 5_000)
        frame(con, run, f"Linear_{i}", t + 200, t + 300)  # an unrecognized module inside the mixer
        gpu(con, run, f"k_mixer_{i}", t + 250)
        gpu(con, run, f"k_block_{i}", t + 6_000)  # residual add: block, no typed scope
    frame(con, run, "Linear_9", 95_000, 99_000)  # called by the ForCausalLM frame: lm_head
    gpu(con, run, "k_lm", 96_000)
    got = by_name(attributed(con, run)[1])
    assert [got[f"k_mixer_{i}"][:3] for i in range(3)] == [
        ("mamba", "scope", 0), ("attention", "scope", 1), ("mamba", "scope", 2)]
    assert got["k_mixer_0"][3] == "JambaMambaMixer"
    assert [got[f"k_block_{i}"][:3] for i in range(3)] == [("other", "none", i) for i in range(3)]
    assert got["k_lm"][:3] == ("lm_head", "scope", None)
    depths = dict(con.execute("SELECT name, depth FROM scopes").fetchall())
    assert depths["nn.Module: JambaModel_0"] == 1 and depths["nn.Module: Linear_2"] == 4


def test_idempotent_and_rank_scoped(con):
    run = add_run(con, ranks=(0, 1))
    for rank in (0, 1):
        scope(con, run, "moe.router", 0, 1_000, rank=rank)
        gpu(con, run, "k", 500, rank=rank)
    with db.transaction(con):
        attribute_run(con, run, rank=0)
    state = con.execute("SELECT rank, layer_type FROM events WHERE source = 'cuda' ORDER BY rank").fetchall()
    assert state == [(0, "moe_router"), (1, None)]
    first = attributed(con, run)
    second = attributed(con, run)
    assert first == second
    assert con.execute("SELECT count(*) FROM scopes").fetchall()[0][0] == 2


def test_capture_layer_scopes_are_kept(con):
    run = add_run(con)
    con.execute("INSERT INTO scopes (run_id, rank, scope_id, kind, name, ts_ns, end_ns) "
                "VALUES (?, 0, 999999, 'layer', 'layers.0', 0, 10)", [run])
    scope(con, run, "self_attn", 0, 100)
    attributed(con, run)
    attributed(con, run)
    kinds = con.execute("SELECT kind, count(*) FROM scopes GROUP BY kind ORDER BY kind").fetchall()
    assert kinds == [("annotation", 1), ("layer", 1)]


def test_every_gpu_event_is_attributed_exactly_once(con):
    run = add_run(con)
    scope(con, run, "step#0", 0, 50_000)
    scope(con, run, "layers.0.mixer", 100, 20_000)
    scope(con, run, "moe.combine", 20_000, 30_000)
    names = ["nvjet_a", "ncclDevKernel_SendRecv", "fused_moe_kernel", "Memcpy HtoD", "triton_poi_fused_add_0"]
    for i, t in enumerate(range(0, 60_000, 3_000)):
        gpu(con, run, names[i % len(names)], t, kind="memcpy" if names[i % len(names)].startswith("Memcpy") else "kernel")
    gpu(con, run, ["g1", "g2"], 150, launch="cudaGraphLaunch")
    summary, rows = attributed(con, run)
    assert len(rows) == summary.n_gpu_events == 22
    assert all(r[1] in LAYER_TYPES for r in rows)
    assert all(r[2] in ("scope", "graph", "name", "none") for r in rows)
    total = con.execute("SELECT sum(duration_ns) FROM events WHERE source = 'cuda'").fetchall()[0][0]
    assert sum(summary.ns_by_method.values()) == total


def test_user_rules_take_precedence(con, tmp_path):
    rules = tmp_path / "mine.toml"
    rules.write_text('[[rule]]\npattern = "^nvjet_"\nlayer_type = "moe_experts"\n'
                     '[[rule]]\npattern = "selective_scan"\nlayer_type = "other"\n')
    run = add_run(con)
    gpu(con, run, "nvjet_sm90_tst_64x8", 100)
    gpu(con, run, "selective_scan_fwd_kernel", 200)
    gpu(con, run, "flash_fwd_kernel", 300)
    with db.transaction(con):
        attribute_run(con, run, rules_path=rules)
    got = dict(con.execute("SELECT name, layer_type || '/' || attr_method FROM events WHERE source = 'cuda'").fetchall())
    assert got == {"nvjet_sm90_tst_64x8": "moe_experts/name", "selective_scan_fwd_kernel": "other/name",
                   "flash_fwd_kernel": "attention/name"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]\npattern = 'x'", "not valid TOML"),
        ("[[rule]]\npattern = 'x'\nlayer_type = 'ssm'\n", "layer_type 'ssm' is not one of"),
        ("[[rule]]\npattern = '(unclosed'\nlayer_type = 'mamba'\n", "bad regular expression"),
        ("[[rule]]\npattern = 'x'\nlayer_type = 'mamba'\ncolour = 'red'\n", "unknown key(s) ['colour']"),
        ("[[rule]]\npattern = 'x'\nlayer_type = 'mamba'\nkinds = ['graph']\n", "`kinds` must be"),
        ("title = 'no rules'\n", "unknown top-level key"),
        ("", "no [[rule]] tables"),
    ],
)
def test_bad_rules_file_is_one_clear_error_and_writes_nothing(con, tmp_path, text, message):
    rules = tmp_path / "bad.toml"
    rules.write_text(text)
    run = add_run(con)
    gpu(con, run, "k", 100)
    with pytest.raises(BadInput) as e, db.transaction(con):
        attribute_run(con, run, rules_path=rules)
    assert message in e.value.message and "\n" not in e.value.message
    assert con.execute("SELECT layer_type FROM events WHERE source = 'cuda'").fetchall() == [(None,)]
    with pytest.raises(BadInput, match="cannot read rules file"):
        attribute_run(con, run, rules_path=tmp_path / "missing.toml")


def test_vague_scopes_yield_to_precise_kernel_names(con):
    run = add_run(con)
    scope(con, run, "model.layers.2.mlp", 0, 1_000)  # vLLM names its MoE block `mlp`
    frame(con, run, "NemotronHMoE_0", 2_000, 3_000)   # MoE container
    scope(con, run, "moe.experts", 4_000, 5_000)      # precise scope: stays
    gpu(con, run, "fused_moe_kernel", 100)
    gpu(con, run, "nvjet_in_mlp", 200)
    gpu(con, run, "topkGatingSoftmax", 2_100)
    gpu(con, run, "nvjet_in_moe", 2_200)
    gpu(con, run, "moe_align_block_size_kernel", 4_100)
    got = by_name(attributed(con, run)[1])
    assert got["fused_moe_kernel"][:3] == ("moe_experts", "name", 2)
    assert got["nvjet_in_mlp"][:3] == ("mlp", "scope", 2)
    assert got["topkGatingSoftmax"][:2] == ("moe_router", "name")
    assert got["nvjet_in_moe"][:2] == ("moe_experts", "scope")
    assert got["moe_align_block_size_kernel"][:2] == ("moe_experts", "scope")


def test_step_from_another_thread_when_the_launching_thread_has_none(con):
    run = add_run(con)
    scope(con, run, "ProfilerStep#7", 0, 1_000, tid=1)
    scope(con, run, "ProfilerStep#8", 1_000, 2_000, tid=1)
    gpu(con, run, "k_main", 500, tid=1)
    gpu(con, run, "k_backward", 1_500, tid=2)  # autograd thread: no step range of its own
    gpu(con, run, "k_late", 2_500, tid=2)      # after every step
    got = by_name(attributed(con, run)[1])
    assert (got["k_main"][4], got["k_backward"][4], got["k_late"][4]) == (7, 8, None)
