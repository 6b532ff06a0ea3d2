"""A synthetic hybrid-MoE run for report, HTML, Perfetto and browser tests (deterministic).

Two ranks, `n_steps` steps (the first 4 prefill, the rest decode), six layers per step in the
pattern mamba, moe, attention, moe, mamba, moe. Every 5th step routes skewed: its MoE layers send
most tokens to expert 0, its experts run longer and its dispatch all-to-all runs 8x longer.
The all-to-alls run on their own stream (11) while the next layer's compute starts on stream 7, so
part of the communication overlaps compute. Dashboard samples read 96 % busy.
"""

from __future__ import annotations

import numpy as np
from factories import add_events, add_routing, add_run, add_samples, add_steps, new_store

from hybridscope.store import db

PATTERN = ("mamba", "moe", "attention", "moe", "mamba", "moe")
N_EXPERTS = 8
MOE_LAYERS = [i for i, t in enumerate(PATTERN) if t == "moe"]


def skewed(step: int) -> bool:
    return step % 5 == 4


def build(path, *, n_steps: int = 30, ranks=(0, 1)):
    """Create the store at `path`; return (connection, run_id)."""
    con = new_store(path)
    run = add_run(con, ranks=list(ranks), label="scenario")
    for rank in ranks:
        _rank_events(con, run, rank, n_steps)
    _routing(con, run, n_steps, ranks)
    _requests(con, run)
    return con, run


def _rank_events(con, run, rank, n_steps):
    rows = {k: [] for k in ("ts", "dur", "lt", "li", "mod", "name", "stream", "step", "phase")}
    step_starts, step_durs, phases = [], [], []
    t = 1_000_000 + rank * 500

    def kernel(ts, dur, lt, li, mod, name, stream, step, phase):
        for k, v in zip(rows, (ts, dur, lt, li, mod, name, stream, step, phase)):
            rows[k].append(v)

    for step in range(n_steps):
        phase = "prefill" if step < 4 else "decode"
        scale = 4 if phase == "prefill" else 1
        start = t
        for li, kind in enumerate(PATTERN):
            if kind == "mamba":
                kernel(t, 40_000 * scale, "mamba", li, f"layers.{li}.mixer", "_chunk_scan_fwd_kernel", 7, step, phase)
                t += 40_000 * scale + 3_000
            elif kind == "attention":
                kernel(t, 60_000 * scale, "attention", li, f"layers.{li}.attn", "flash_fwd_kernel", 7, step, phase)
                t += 60_000 * scale + 3_000
            else:
                skew = skewed(step)
                kernel(t, 8_000, "moe_router", li, f"layers.{li}.moe.gate", "topkGatingSoftmax", 7, step, phase)
                t += 8_000 + 2_000
                comm = 20_000 * (8 if skew else 1) + rank * 1_000
                kernel(t, comm, "moe_comm", li, f"layers.{li}.moe.dispatch", "ncclDevKernel_SendRecv", 11, step, phase)
                # the expert GEMMs start while the tail of the dispatch is still in flight
                t += comm - 5_000
                exp = 50_000 * (2 if skew else 1)
                kernel(t, exp, "moe_experts", li, f"layers.{li}.moe.experts", "fused_moe_kernel", 7, step, phase)
                t += exp + 2_000
                kernel(t, 15_000, "moe_comm", li, f"layers.{li}.moe.combine", "ncclDevKernel_SendRecv", 11, step, phase)
                t += 15_000 + 2_000
        step_starts.append(start)
        step_durs.append(t - start)
        phases.append(phase)
        t += 20_000  # scheduler gap between steps
    n = len(rows["ts"])
    add_events(con, run, rows["dur"], rank=rank, ts_ns=rows["ts"], layer_type=rows["lt"], layer_index=rows["li"],
               module=rows["mod"], name=rows["name"], stream=rows["stream"], step=rows["step"], phase=rows["phase"],
               device=rank, attr_method="scope", correlation=list(range(1, n + 1)))
    # the steps table (as capture records it)
    add_steps(con, run, step_durs, rank=rank, start_ns=step_starts[0], phase=phases,
              n_tokens=[512 if p == "prefill" else 8 for p in phases], n_requests=[8] * len(phases))
    # steps are back to back in the steps table, so shift each to its real start
    con.execute("UPDATE steps SET ts_ns = ts_ns + step * 20000 WHERE run_id = ? AND rank = ?", [run, rank])
    ts = np.arange(step_starts[0], t, 100_000)
    add_samples(con, run, "gpu_util_pct", ts.tolist(), (96 + (np.arange(ts.size) % 3) - 1).tolist(),
                rank=rank, device=rank)


def _routing(con, run, n_steps, ranks):
    rng = np.random.default_rng(7)
    for rank in ranks:
        tok = np.full((n_steps, len(MOE_LAYERS), N_EXPERTS), 16, dtype=np.int64)
        tok += rng.integers(-2, 3, size=tok.shape)
        for s in range(n_steps):
            if skewed(s):
                tok[s, :, 0] += 100
        add_routing(con, run, tok, rank=rank, layers=MOE_LAYERS)


def _requests(con, run):
    n = 8
    arrival = np.arange(n) * 10_000 + 1_000_000
    first = arrival + 2_000_000 + np.arange(n) * 50_000
    db.insert_columns(con, "requests", {
        "run_id": np.full(n, run), "request_id": np.arange(n), "arrival_ns": arrival,
        "first_token_ns": first, "finish_ns": first + 26 * 900_000,
        "prompt_tokens": np.full(n, 64), "output_tokens": np.full(n, 27)})


def plot_marks(document: str) -> dict[str, dict[str, int]]:
    """{data-plot name: {mark class: count}} for the figures of an HTML report (or a DOM dump)."""
    from collections import Counter
    from html.parser import HTMLParser

    class Marks(HTMLParser):
        def __init__(self):
            super().__init__()
            self.plot, self.depth, self.found = None, 0, {}

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "figure" and a.get("data-plot"):
                self.plot, self.depth = a["data-plot"], 0
                self.found[self.plot] = Counter()
            elif self.plot is not None:
                if tag == "figure":
                    self.depth += 1
                for cls in (a.get("class") or "").split():
                    self.found[self.plot][f"{tag}.{cls}"] += 1
                if tag == "svg":
                    self.found[self.plot]["svg"] += 1

        def handle_endtag(self, tag):
            if tag == "figure" and self.plot is not None:
                if self.depth == 0:
                    self.plot = None
                else:
                    self.depth -= 1

    p = Marks()
    p.feed(document)
    return {k: dict(v) for k, v in p.found.items()}


def expected_marks(report) -> dict[str, tuple[str, int]]:
    """What each plot must draw, from the report's data: {plot: (mark, count)}."""
    return {
        "cdf": ("path.series", len(set(report["latency_cdf"].column("layer_type")))),
        "layers": ("rect.bar", sum(1 for r in report["decompose_layer"].to_records()
                                   if r["layer_type"] not in ("all", "warm-up") and r["layer_index"] is not None)
                   or sum(1 for m in report["decompose_module"].column("module") if m not in ("all", "warm-up"))),
        "steps": ("rect.bar", len(report["step_stack_bins"])),
        "experts": ("rect.cell", len(set(report["expert_load"].column("layer_index")))
                    * len(set(report["expert_load"].column("expert")))),
        "imbalance": ("circle.dot", sum(1 for v in report["expert_steps"].column("moe_comm_ns") if v is not None)),
        "overlap": ("rect.bar", 4 * len(report["overlap"])),
        "gaps": ("rect.bar", len(report["gap_histogram"])),
    }
