"""A realistic large store for the scale benchmark: N kernels of a hybrid MoE serving run on 8 ranks.

Every rank runs the same steps of a 24-layer hybrid (3 Mamba2 : 1 attention, an MoE block in every
other layer with a dispatch and a combine all-to-all on a communication stream), one GPU per rank:
~270 kernels a step with log-normal durations around per-kernel means, every 16th step a prefill
(3x longer), host stalls between steps, rank 0 holding the hot experts (its expert kernels 30 %
longer). Beside the kernels: one `cudaLaunchKernel` per kernel (correlation id; launches run ahead
of the GPU inside the step), the `steps` table (recorded steps), kernels carrying their step and
phase as capture writes them, `routing` (tokens per expert of every MoE layer and step), and NCCL
collective args (process group, message size, dtype) so the collectives analyses have work; each
rank reaches a collective a few µs apart (rank 0, with the hot experts, last).

Built in DuckDB from a template of one step crossed with the steps (no per-event Python).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

RANKS = 8
LAYERS = 24
EXPERTS = 8
GAP_NS = 1_500  # launch gap between consecutive compute kernels
COMPUTE, COMM = 7, 13  # streams


def template() -> dict[str, list]:
    """One step's kernels in launch order: name, layer type, layer index, module, stream, offset
    from the step start (ns), mean duration (ns), sigma of the log-normal jitter."""
    rows: list[tuple] = []
    t = 0

    def add(name, lt, li, module, mean, sigma=0.25, stream=COMPUTE, advance=True):
        nonlocal t
        rows.append((name, lt, li, module, stream, t, mean, sigma))
        if advance:
            t += mean + GAP_NS
        else:
            t += GAP_NS

    add("embedding_kernel", "embedding", None, "model.embed_tokens", 3_000)
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        add("rmsnorm_kernel", "norm", i, f"{p}.input_layernorm", 2_500, 0.15)
        if i % 4 == 3:
            add("nvjet_qkv_gemm", "attention", i, f"{p}.self_attn.qkv_proj", 10_000)
            add("flash_fwd_splitkv_kernel", "attention", i, f"{p}.self_attn", 14_000, 0.6)
            add("nvjet_o_gemm", "attention", i, f"{p}.self_attn.o_proj", 8_000)
        else:
            add("nvjet_in_proj_gemm", "mamba", i, f"{p}.mixer.in_proj", 12_000)
            add("causal_conv1d_fwd_kernel", "mamba", i, f"{p}.mixer.conv1d", 4_000)
            add("mamba_chunk_scan_combined_kernel", "mamba", i, f"{p}.mixer", 9_000)
            add("nvjet_out_proj_gemm", "mamba", i, f"{p}.mixer.out_proj", 10_000)
        if i % 2 == 1:
            add("rmsnorm_kernel", "norm", i, f"{p}.post_attention_layernorm", 2_500, 0.15)
            add("nvjet_router_gemm", "moe_router", i, f"{p}.moe.gate", 4_000, 0.2)
            add("topk_softmax_kernel", "moe_router", i, f"{p}.moe.gate", 2_000, 0.2)
            add("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "moe_comm", i,
                f"{p}.moe.dispatch", 30_000, 1.0, COMM)
            add("fused_moe_kernel", "moe_experts", i, f"{p}.moe.experts", 22_000, 0.4)
            add("fused_moe_kernel", "moe_experts", i, f"{p}.moe.experts", 22_000, 0.4)
            # the combine runs on the comm stream while the next layer's compute starts
            add("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "moe_comm", i,
                f"{p}.moe.combine", 30_000, 1.0, COMM, advance=False)
        else:
            add("nvjet_mlp_gemm", "mlp", i, f"{p}.mlp", 12_000, 0.3)
    add("rmsnorm_kernel", "norm", None, "model.norm", 2_500, 0.15)
    add("nvjet_lm_head_gemm", "lm_head", None, "lm_head", 60_000, 0.2)
    add("sampling_kernel", "sampling", None, "sampler", 5_000, 0.3)
    add("triton_poi_fused_0", None, None, None, 3_500, 0.5)  # one kernel no rule or scope typed
    keys = ("name", "lt", "li", "module", "stream", "off", "mean", "sigma")
    out = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    out["j"] = list(range(len(rows)))
    out["span"] = t
    return out


def build(path: Path, n_kernels: int, *, seed: int = 7) -> float:
    """Create the store at `path` with about `n_kernels` kernels; return the seconds it took."""
    from hybridscope.store import db

    t0 = time.perf_counter()
    tpl = template()
    span = tpl.pop("span")
    k = len(tpl["j"])
    n_steps = max(1, n_kernels // (RANKS * k))
    rng = np.random.default_rng(seed)
    # steps: the same step boundaries on every rank (they wait for each other), a host stall between
    prefill = (np.arange(n_steps) % 16) == 0
    scale = np.where(prefill, 3.0, 1.0)
    length = (span * scale).astype(np.int64) + rng.exponential(20_000, n_steps).astype(np.int64) + 40_000
    start = np.concatenate([[0], np.cumsum(length)[:-1]]) + 1_000_000
    steps = {"step": np.arange(n_steps, dtype=np.int64), "ts": start, "dur": length,
             "scale": scale, "prefill": prefill}
    con = db.open_store(path)
    con.execute("SELECT setseed(?)", [seed / 100]).fetchall()
    con.register("tpl", {c: np.asarray(v, dtype=object if c in ("name", "lt", "module") else None)
                         if c != "li" else np.asarray([-1 if x is None else x for x in v]) for c, v in tpl.items()})
    con.register("st", steps)
    end = int(start[-1] + length[-1] + 1_000_000)
    with db.transaction(con):
        con.execute("INSERT INTO runs (run_id, label, source, world_size, device_name, t_start_ns, t_end_ns)"
                    " VALUES (1, 'scale', 'capture', ?, 'synthetic', 0, ?)", [RANKS, end])
        con.execute("INSERT INTO run_ranks (run_id, rank, n_events, t_start_ns, t_end_ns)"
                    " SELECT 1, r, ?, 0, ? FROM range(?) t(r)", [2 * n_steps * k, end, RANKS])
        con.execute("""
            INSERT INTO steps (run_id, rank, step, ts_ns, duration_ns, phase, n_tokens, n_requests, sampled)
            SELECT 1, r, step, ts, dur, CASE WHEN prefill THEN 'prefill' ELSE 'decode' END,
                   CASE WHEN prefill THEN 4096 ELSE 32 END, 32, true
            FROM st, range(?) t(r)""", [RANKS])
        _kernels(con, k)
        _routing(con)
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def _kernels(con, k: int) -> None:
    """Kernels and their launches, rank by rank (bounded memory while building)."""
    for r in range(RANKS):
        con.execute(f"""
            INSERT INTO events (run_id, rank, event_id, source, kind, name, device, stream, pid, tid, ts_ns,
                                duration_ns, duration_us, correlation, args, layer_type, layer_index, module,
                                attr_method, step, phase)
            SELECT 1, $r, st.step * {k} + tpl.j, 'cuda', 'kernel', tpl.name, $r, tpl.stream, $r, tpl.stream,
                   st.ts + (tpl.off * st.scale)::BIGINT
                       + CASE WHEN tpl.lt = 'moe_comm'  -- never two ranks at the same ns: no ties to break
                         THEN (random() * 500)::BIGINT * {RANKS} + $r + CASE WHEN $r = 0 THEN 3000 ELSE 0 END
                         ELSE 0 END, d, d / 1000.0, st.step * {k} + tpl.j + 1,
                   CASE WHEN tpl.lt = 'moe_comm' THEN json_object(
                       'Collective name', 'all_to_all', 'In msg nelems', 262144, 'Out msg nelems', 262144,
                       'Group size', {RANKS}, 'dtype', 'BFloat16', 'Process Group Name', 'ep',
                       'In split size', [], 'Out split size', []) END,
                   tpl.lt, nullif(tpl.li, -1), tpl.module, CASE WHEN tpl.lt IS NULL THEN 'none' ELSE 'scope' END,
                   st.step, CASE WHEN st.prefill THEN 'prefill' ELSE 'decode' END
            FROM st, tpl, LATERAL (SELECT greatest(1, (tpl.mean * st.scale
                    * CASE WHEN tpl.lt = 'moe_experts' AND $r = 0 THEN 1.3 ELSE 1.0 END
                    * exp(tpl.sigma * sqrt(-2 * ln(greatest(random(), 1e-12))) * cos(2 * pi() * random())))::BIGINT)
                    AS d)
        """, {"r": r})
        con.execute(f"""
            INSERT INTO events (run_id, rank, event_id, source, kind, name, pid, tid, ts_ns, duration_ns,
                                duration_us, correlation)
            SELECT 1, $r, 1_000_000_000 + st.step * {k} + tpl.j, 'cuda_api', 'runtime', 'cudaLaunchKernel',
                   $r, 1, st.ts + (tpl.off * st.scale * 0.5)::BIGINT, 2_500, 2.5, st.step * {k} + tpl.j + 1
            FROM st, tpl
        """, {"r": r})


def _routing(con) -> None:
    """Tokens per expert of every MoE layer and step: expert 0 hot (3x), the rest even, with noise."""
    con.execute(f"""
        INSERT INTO routing (run_id, rank, step, layer_index, expert, tokens)
        SELECT 1, r, step, li, e,
               greatest(0, ((CASE WHEN prefill THEN 4096 ELSE 32 END) * 2 / {EXPERTS + 2}
                            * CASE WHEN e = 0 THEN 3 ELSE 1 END * (0.7 + 0.6 * random()))::BIGINT)
        FROM st, range({RANKS}) a(r), (SELECT DISTINCT li FROM tpl WHERE lt = 'moe_router') b(li),
             range({EXPERTS}) c(e)
    """)
