"""GPU benchmark of hybridscope.engine (numbers for docs/benchmarks.md, "Engine" section).

    python benchmarks/bench_engine.py --out results/   [--preset nemotron3-nano-mini] [--skip-hf]

(a) decode throughput against HF transformers' NemotronH built from the same config (random init, same
    GPU, same batch, prompt 512): decode tokens/s = batch * (N2 - N1) / (t(N2) - t(N1)) for both, so
    prefill and warm-up cancel out;
(b) batch-1 decode step time (CUDA-graph replay, cuda events, no sampling) against the HBM roofline:
    bytes of active weights + recurrent states + KV read per step / measured device copy bandwidth;
(c) memory against context length: static caches for 8 requests, allocated bytes measured with
    torch.cuda.memory_allocated, split into KV cache and SSM (+conv) state.
(d) ``--moe-sweep``: the decode MoE kernels (``moe_experts_gemv``) per launch configuration, batch 1,
    rotating over every MoE layer's weights so nothing is served from L2, against the grouped-GEMM path.
``--quick`` runs (b) and the batch-1/8 engine decode of (a) only (eager ops, then compiled decode).
Each section is timed and guarded: one failing section is recorded and the others still run.
Writes engine_bench.json and engine_bench.md (tables) under --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from pathlib import Path

import torch

from hybridscope.engine.config import EngineConfig
from hybridscope.engine.model import build_model
from hybridscope.engine.scheduler import Engine, Request

PROMPT = 512


def copy_bandwidth(nbytes: int = 2**30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * iters / (start.elapsed_time(end) / 1e3)


def _nbytes(mod) -> int:
    return sum(p.numel() * p.element_size() for p in mod.parameters())


def decode_bytes(model, context: int, batch: int = 1) -> dict[str, int]:
    """Bytes one dense decode step must move from HBM: every weight it reads (each MoE: router, the
    top-k experts a batch-1 token selects, shared expert), states read and written, KV read."""
    cfg, el = model.cfg, model.embed.weight.element_size()
    w = _nbytes(model.norm_f) + _nbytes(model.lm_head) + batch * cfg.d_model * el
    ssm = conv = kv = 0
    for blk in model.layers:
        w += _nbytes(blk.norm)
        if blk.char == "E":
            e = blk.moe.experts
            per_expert = (e.up[0].numel() + e.down[0].numel()) * e.up.element_size()
            w += _nbytes(blk.moe.router) + min(cfg.n_experts, batch * cfg.top_k) * per_expert
            w += _nbytes(blk.moe.shared) if blk.moe.shared is not None else 0
        elif blk.char == "-":
            w += _nbytes(blk.mlp)
        else:
            w += _nbytes(blk.mixer)
        if blk.char in "MP":
            ssm += 2 * batch * cfg.mamba_heads * cfg.mamba_head_dim * cfg.ssm_state * 4
            conv += 2 * batch * cfg.conv_dim * (cfg.conv_kernel - 1) * el
        if blk.char in "*P":
            kv += batch * 2 * cfg.n_kv_heads * cfg.head_dim * el * (context + 1)
    return {"weights": w, "ssm_state": ssm, "conv_state": conv, "kv_cache": kv, "total": w + ssm + conv + kv}


def engine_decode_rate(model, batch: int, n1: int, n2: int, compile_mode=False) -> dict:
    """Decode tokens/s of the engine (CUDA graphs) by the N2 - N1 difference; also the step p50."""
    eng = Engine(model, max_batch=batch, max_seq_len=PROMPT + n2 + 8, compile=compile_mode)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, model.cfg.vocab_size, (PROMPT,), generator=g).tolist() for _ in range(batch)]

    def timed(n: int) -> float:
        eng.steps, eng.finished = [], []
        torch.cuda.synchronize()
        t = time.perf_counter()
        eng.run([Request(i, p, n) for i, p in enumerate(prompts)])
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(n2)  # warm-up: captures every graph this workload needs
    t1, t2 = timed(n1), timed(n2)
    steps = sorted(s.latency for s in eng.steps if s.kind == "decode")
    tokens = [r.tokens for r in sorted(eng.finished, key=lambda r: r.rid)]
    return {
        "tok_s": batch * (n2 - n1) / (t2 - t1),
        "t_n1": t1,
        "t_n2": t2,
        "decode_step_p50_ms": 1e3 * steps[len(steps) // 2],
        "tokens": tokens,
        "graphs": len(eng.graphs),
    }


def decode_step(
    model, context: int, batch: int = 1, iters: int = 50, compile_mode=False, kernels: bool = True
):
    """Seconds per replay of the captured dense decode graph at ``context`` tokens (no sampling), and
    (``kernels``) the replay's GPU kernels from Kineto: count, summed kernel time, top 12 by time."""
    eng = Engine(model, max_batch=batch, max_seq_len=context + 64, compile=compile_mode)
    g = torch.Generator().manual_seed(1)
    vocab = model.cfg.vocab_size
    eng.submit(
        [Request(i, torch.randint(1, vocab, (context,), generator=g).tolist(), 32) for i in range(batch)]
    )
    for _ in range(4):  # prefill, then decode steps (captures the graph)
        eng.step()
    graph = eng.graphs[max(eng.graphs)][0]
    out = {"step_s": replay_time(graph, iters, warmup=5)}
    if kernels:
        out.update(kernel_breakdown(graph))
    return out


def kernel_breakdown(graph, replays: int = 3) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    by_name: dict[str, list[float]] = {}
    for e in evs:
        by_name.setdefault(e.name, []).append(
            e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time
        )
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:20]
    return {
        "kernels_per_step": len(evs) / replays,
        "kernel_time_per_step_s": sum(sum(v) for v in by_name.values()) / replays / 1e6,
        "top_kernels_us_per_step": [(k[:90], len(v) // replays, round(sum(v) / replays, 1)) for k, v in top],
    }


def hf_config(cfg: EngineConfig):
    from transformers import NemotronHConfig

    return NemotronHConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        hybrid_override_pattern=cfg.pattern,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        mamba_num_heads=cfg.mamba_heads,
        mamba_head_dim=cfg.mamba_head_dim,
        ssm_state_size=cfg.ssm_state,
        n_groups=cfg.n_groups,
        chunk_size=cfg.chunk_size,
        conv_kernel=cfg.conv_kernel,
        n_routed_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        moe_intermediate_size=cfg.d_expert,
        moe_shared_expert_intermediate_size=cfg.d_shared,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=cfg.routed_scale,
        norm_topk_prob=cfg.norm_topk,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=8192,
    )


def hf_decode_rate(cfg: EngineConfig, batches: list[int], n1: int, n2: int) -> dict:
    """Decode tokens/s of HF NemotronH ``generate`` (greedy, fixed length) by the N2 - N1 difference."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(hf_config(cfg), dtype=torch.bfloat16).eval()
    out = {"params": sum(p.numel() for p in m.parameters())}
    for b in batches:
        ids = torch.randint(10, cfg.vocab_size - 10, (b, PROMPT), device="cuda")

        def timed(n: int, ids=ids) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                m.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )
            torch.cuda.synchronize()
            return time.perf_counter() - t

        timed(2)
        t1, t2 = timed(n1), timed(n2)
        out[b] = {"tok_s": b * (n2 - n1) / (t2 - t1), "t_n1": t1, "t_n2": t2}
    return out


def memory_table(cfg: EngineConfig, contexts: list[int], batch: int = 8) -> list[dict]:
    rows = []
    for ctx in contexts:
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        from hybridscope.engine.cache import HybridCache

        cache = HybridCache(cfg, batch, ctx, "cuda")
        measured = torch.cuda.memory_allocated() - before
        mb = cache.memory_breakdown([ctx] * batch)
        rows.append(
            {
                "context": ctx,
                "batch": batch,
                "measured_bytes": measured,
                "kv_cache": mb["kv_cache_used"],
                "ssm_state": mb["ssm_state_used"],
                "conv_state": mb["conv_state_used"],
            }
        )
        del cache
    return rows


def section(results: dict, name: str, fn, deadline: float):
    if time.monotonic() > deadline:
        results[name] = {"skipped": "time budget"}
        return
    t = time.monotonic()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001  a failing section is recorded; the others still run
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    results.setdefault("section_s", {})[name] = round(time.monotonic() - t, 1)
    if "out_dir" in results:  # saved after every section: a later timeout keeps what was measured
        (Path(results["out_dir"]) / "engine_bench.json").write_text(
            json.dumps(results, indent=1, default=str)
        )
    print(f"[{name}] {time.monotonic() - t:.1f}s: {json.dumps(results[name], default=str)[:600]}", flush=True)


def _graph_time(fn, iters: int = 10) -> float:
    """Seconds per replay of ``fn`` captured in a CUDA graph (after an eager warm-up call)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_time(graph, iters, warmup=3)


def replay_time(graph, iters: int, warmup: int) -> float:
    """Seconds per replay of a captured CUDA graph, by CUDA events around `iters` replays."""
    for _ in range(warmup):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


MOE_CONFIGS = {  # (rows per program, reduction chunk, warps)
    "up": [(8, 256, 4), (8, 512, 4), (8, 1024, 8), (16, 512, 8), (16, 1024, 8), (4, 1024, 4), (32, 256, 8)],
    "down": [(16, 512, 8), (16, 256, 4), (32, 512, 8), (8, 1024, 4), (16, 1024, 8), (32, 256, 4), (64, 128, 8)],
}


def moe_sweep(model) -> dict:
    """Batch-1 MoE (routed top-k + shared expert + residual) per call: the grouped GEMVs under each
    launch configuration of ``moe_gemv_triton.CONFIG`` (up, then down at the best up), and the
    grouped-GEMM path; one call per MoE layer per replay so the weights come from HBM. Leaves the
    fastest configuration in ``CONFIG`` (the sections after it run with it)."""
    from hybridscope.engine.kernels import moe_gemv_triton as mt

    moes = [b.moe for b in model.layers if b.char == "E"]
    x = torch.randn(1, model.cfg.d_model, device="cuda", dtype=model.cfg.torch_dtype)
    ex = moes[0].experts
    per_expert = (ex.up[0].numel() + ex.down[0].numel()) * ex.up.element_size()
    nbytes = model.cfg.top_k * per_expert + sum(p.numel() * p.element_size() for p in moes[0].shared.parameters())

    def run_all():
        for m in moes:
            m(x, residual=x)

    out: dict = {"bytes_per_call": nbytes, "calls": len(moes)}

    def timed(label: str) -> float:
        t = _graph_time(run_all) / len(moes)
        out[label] = {"us": round(t * 1e6, 2), "GBs": round(nbytes / t / 1e9)}
        return t

    for part in ("up", "down"):
        best = None
        for c in MOE_CONFIGS[part]:
            mt.CONFIG[part] = c
            t = timed(f"{part}={c}")
            best = (t, c) if best is None or t < best[0] else best
        mt.CONFIG[part] = best[1]
    out["best"] = dict(mt.CONFIG)
    for m in moes:
        m.gemv_path = lambda T: False
    try:
        timed("grouped_mm path")
    finally:
        for m in moes:
            del m.gemv_path
    return out


def engine_sections(res: dict, cfg: EngineConfig, args, deadline: float) -> None:
    """Eager-op sections first (b, a, c), then the compiled-decode variants; the model is freed on return."""
    model = build_model(cfg, "cuda")
    torch.cuda.synchronize()
    res["params"] = sum(p.numel() for p in model.parameters())

    def roofline(ctx: int, mode=False) -> dict:
        return {**decode_step(model, ctx, compile_mode=mode), **decode_bytes(model, ctx)}

    if args.moe_sweep:
        section(res, "moe_sweep", lambda: moe_sweep(model), deadline)
    section(res, "roofline_b1_ctx512", lambda: roofline(PROMPT), deadline)
    if args.quick:
        quick_sections(res, model, roofline, args, deadline)
        return
    for b in (1, 8):
        section(
            res, f"engine_decode_b{b}", lambda b=b: engine_decode_rate(model, b, args.n1, args.n2), deadline
        )
    if not args.skip_hf:
        section(res, "hf_decode", lambda: hf_decode_rate(cfg, [1, 8], args.n1, args.n2), deadline)
        gc.collect()
        torch.cuda.empty_cache()
    section(res, "memory_vs_context", lambda: memory_table(cfg, [1024, 4096, 16384, 65536, 131072]), deadline)
    section(res, "roofline_b1_ctx4032", lambda: roofline(4032), deadline)
    section(res, "engine_decode_b32", lambda: engine_decode_rate(model, 32, args.n1, args.n2), deadline)
    # compiled decode (torch.compile per block sublayer, then CUDA graphs): from here on the model's
    # dense decode runs compiled code
    section(res, "roofline_b1_ctx512_compiled", lambda: roofline(PROMPT, "decode"), deadline)
    for b in (1, 8, 32):
        section(
            res,
            f"engine_decode_b{b}_compiled",
            lambda b=b: engine_decode_rate(model, b, args.n1, args.n2, "decode"),
            deadline,
        )


def _torch_norms(model):
    """A/B switch: the model's norms and Mamba2 dt as the PyTorch op chains they replaced (returns an
    undo function). Same math; the kernels' versions round once in fp32."""
    import torch.nn.functional as F

    def rms_norm(x, weight, eps):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def mamba_dt(dt, dt_bias, A_log):
        return F.softplus(dt.float() + dt_bias), -torch.exp(A_log)

    def gated_rmsnorm(y, z, weight, groups, eps):
        T = y.shape[0]
        g = (y.reshape(T, -1) * F.silu(z)).view(T, groups, -1)
        return F.rms_norm(g, (g.shape[-1],), eps=eps).view(T, -1) * weight

    ops = model.ops
    saved = {n: getattr(ops, n) for n in ("rms_norm", "mamba_dt", "gated_rmsnorm")}
    ops.rms_norm, ops.mamba_dt, ops.gated_rmsnorm = rms_norm, mamba_dt, gated_rmsnorm
    return lambda: [setattr(ops, n, f) for n, f in saved.items()]


def quick_sections(res: dict, model, roofline, args, deadline: float) -> None:
    """(b) at 4032 tokens and with the PyTorch norm chains (A/B), batch-1/8 engine decode; then
    batch 1 compiled."""
    section(res, "roofline_b1_ctx4032", lambda: roofline(4032), deadline)

    def torch_norms():
        undo = _torch_norms(model)
        try:
            return roofline(PROMPT)
        finally:
            undo()

    section(res, "roofline_b1_ctx512_torch_norms", torch_norms, deadline)
    for b in (1, 8):
        section(
            res, f"engine_decode_b{b}", lambda b=b: engine_decode_rate(model, b, args.n1, args.n2), deadline
        )
    section(res, "roofline_b1_ctx512_compiled", lambda: roofline(PROMPT, "decode"), deadline)
    section(
        res, "engine_decode_b1_compiled", lambda: engine_decode_rate(model, 1, args.n1, args.n2, "decode"), deadline
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--preset", default="nemotron3-nano-mini")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--budget-s", type=float, default=360)
    ap.add_argument("--n1", type=int, default=8)
    ap.add_argument("--n2", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="(b) and batch-1/8 decode only (see the docstring)")
    ap.add_argument("--moe-sweep", action="store_true", help="time the decode MoE kernels per launch config")
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = EngineConfig.from_preset(args.preset)
    res: dict = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "out_dir": str(out),
    }
    section(res, "copy_bandwidth_GBs", lambda: copy_bandwidth() / 1e9, deadline)
    engine_sections(res, cfg, args, deadline)
    gc.collect()
    torch.cuda.empty_cache()
    (out / "engine_bench.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "engine_bench.md").write_text(render(res))
    print(render(res))


def render(res: dict) -> str:
    """Markdown tables from the results (missing sections shown as such)."""
    bw = res.get("copy_bandwidth_GBs")
    lines = [
        (
            f"Device: {res['device']}, torch {res['torch']}, preset {res['preset']} "
            f"({res.get('params', 0) / 1e9:.2f} B params), copy bandwidth {bw if isinstance(bw, dict) else f'{bw:.0f} GB/s'}"
        ),
        "",
    ]
    lines += ["| decode, batch | engine tok/s | HF NemotronH tok/s | speed-up |", "|---|---|---|---|"]
    hf = res.get("hf_decode", {})
    rows = [(b, f"engine_decode_b{b}") for b in (1, 8, 32)]
    rows += [(b, f"engine_decode_b{b}_compiled") for b in (1, 8, 32)]
    for b, key in rows:
        e = res.get(key, {})
        h = hf.get(b) or hf.get(str(b)) or {}
        et, ht = e.get("tok_s"), h.get("tok_s")
        label = f"{b} (compiled decode)" if key.endswith("compiled") else str(b)
        if key.endswith("compiled") and e.get("tokens") and res.get(f"engine_decode_b{b}", {}).get("tokens"):
            ref = [t for r in res[f"engine_decode_b{b}"]["tokens"] for t in r]
            got = [t for r in e["tokens"] for t in r]
            label += f", {sum(x == y for x, y in zip(ref, got)) / len(ref):.0%} tokens = eager"
        lines.append(f"| {label} | {et:.0f} | " if et else f"| {label} | {e} | ")
        lines[-1] += f"{ht:.1f} | {et / ht:.1f}x |" if (et and ht) else "- | - |"
    lines += [
        "",
        (
            "| batch-1 decode | context | bytes/step (GB) | roofline (ms) | measured (ms) | ratio | kernels/step "
            "| kernel busy (ms) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(k for k in res if k.startswith("roofline")):
        r = res[key]
        if "step_s" in r and not isinstance(bw, dict):
            roof = r["total"] / (bw * 1e9)
            lines.append(
                f"| {key} | {key.split('ctx')[1].split('_')[0]} | {r['total'] / 1e9:.2f} | "
                f"{roof * 1e3:.2f} | {r['step_s'] * 1e3:.2f} | {r['step_s'] / roof:.2f}x | "
                f"{r.get('kernels_per_step', '-')} | {r.get('kernel_time_per_step_s', 0) * 1e3:.2f} |"
            )
        else:
            lines.append(f"| {key} | - | - | - | {str(r)[:200]} | - | - | - |")
    lines += [
        "",
        "| context | requests | KV cache (MiB) | SSM state (MiB) | conv state (MiB) | measured alloc (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res.get("memory_vs_context", []) if isinstance(res.get("memory_vs_context"), list) else []:
        lines.append(
            f"| {r['context']} | {r['batch']} | {r['kv_cache'] / 2**20:.0f} | {r['ssm_state'] / 2**20:.0f} | "
            f"{r['conv_state'] / 2**20:.1f} | {r['measured_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
