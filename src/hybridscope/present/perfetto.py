"""Chrome trace-event JSON for the Perfetto UI (ui.perfetto.dev) and chrome://tracing.

Layout: one process per rank ("rank N"); in it a "steps" track, then for a capture's layer timings
one track per layer type ("layers · mamba": each module call from its start over its inclusive
span, args with its exclusive time; calls that enclose other timed calls, such as a block around
its MoE parts, on a "layers · enclosing calls" track), then one track per (layer type, stream) of kernels, named
"moe_comm · stream 11"; layer types in vocabulary order. Every kernel is
a complete event ('X') named by the kernel, with args layer_type, layer_index, module, stream, step,
phase. Time: `ts`/`dur` in µs as floats carrying the ns digits (ts from the run's window start; the
absolute start is in otherData.t0_ns).

Perfetto needs the slices of one track to nest: a kernel that starts inside the previous one on
its track and ends after it (a clock artifact on one stream) goes to that track's "overlap" twin;
steps that overlap (a derived step lasts until its last kernel ends) alternate between two tracks.
"""

from __future__ import annotations

import itertools

import numpy as np

from hybridscope.attribute.vocab import ORDER

STEPS_TID = 1
LAYERS_TID = 100  # + the layer type's index in the vocabulary
BLOCKS_TID = LAYERS_TID - 1  # calls that enclose other timed calls
OVERLAP_TID = 50_000  # added to a track's tid for its overlap twin


def trace_events(kernels: dict[str, np.ndarray], steps: list[dict], t0_ns: int, run: dict,
                 layers: dict[str, np.ndarray] | None = None) -> dict:
    """The trace document (a dict ready for JSON) from timeline.kernels, timeline.step_windows and
    timeline.layer_timings."""
    n = len(kernels["ts_ns"])
    type_idx = np.array([ORDER.index(t) if t in ORDER else len(ORDER) for t in kernels["layer_type"].tolist()],
                        dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    stream = np.where(kernels["stream"] >= 0, kernels["stream"], 0) if n else np.zeros(0, dtype=np.int64)
    tid = (type_idx + 1) * 1000 + stream % 1000 + 10
    tid = tid + OVERLAP_TID * _partial_overlaps(kernels["rank"], tid, kernels["ts_ns"], kernels["end_ns"])
    ts_us = (kernels["ts_ns"] - t0_ns) / 1000.0
    dur_us = kernels["duration_ns"] / 1000.0
    cols = [kernels[c].tolist() for c in ("name", "rank", "layer_type", "layer_index", "module", "step", "phase")]
    events = [
        {"ph": "X", "name": name, "cat": lt, "pid": rank, "tid": t, "ts": ts, "dur": d,
         "args": {"layer_type": lt, "layer_index": None if li < 0 else li, "module": mod, "stream": s,
                  "step": None if st < 0 else st, "phase": ph}}
        for name, rank, lt, li, mod, st, ph, t, ts, d, s in zip(*cols, tid.tolist(), ts_us.tolist(),
                                                               dur_us.tolist(), kernels["stream"].tolist())
    ]
    lanes = _step_lanes(steps)
    events += [{"ph": "X", "name": f"step {w['step']}" + (f" ({w['phase']})" if w["phase"] else ""),
                "cat": "step", "pid": w["rank"], "tid": STEPS_TID + lane, "ts": (w["ts_ns"] - t0_ns) / 1000.0,
                "dur": (w["end_ns"] - w["ts_ns"]) / 1000.0,
                "args": {"step": w["step"], "phase": w["phase"], "gpu_ns": w["gpu_ns"], "kernels": w["n_kernels"]}}
               for w, lane in zip(steps, lanes)]
    layer_events, layer_meta = _layer_track(layers, t0_ns) if layers is not None else ([], [])
    layer_ranks = set(layers["rank"].tolist()) if layers is not None else set()
    return {"traceEvents": _metadata(kernels["rank"], tid, type_idx, stream, steps, layer_ranks) + layer_meta
            + events + layer_events,
            "displayTimeUnit": "ns",
            "otherData": {"generator": "hybridscope", "run_id": run.get("run_id"), "label": run.get("label"),
                          "t0_ns": int(t0_ns)}}


def _layer_track(layers: dict[str, np.ndarray], t0_ns: int) -> tuple[list[dict], list[dict]]:
    """The layer timings' slices, one track per (rank, layer type), and those tracks' names."""
    if not len(layers["ts_ns"]):
        return [], []
    type_idx = np.array([ORDER.index(t) if t in ORDER else len(ORDER) for t in layers["layer_type"].tolist()],
                        dtype=np.int64)
    # a call that encloses other timed calls (a block around its mixer, router, experts) has its own
    # track: on its type's track it would cover its children's time as if it were that type's
    encloses = (layers["end_ns"] - layers["ts_ns"]) > layers["duration_ns"]
    tid = np.where(encloses, BLOCKS_TID, LAYERS_TID + type_idx)
    tid = tid + OVERLAP_TID * _partial_overlaps(layers["rank"], tid, layers["ts_ns"], layers["end_ns"])
    cols = [layers[c].tolist() for c in ("name", "rank", "layer_type", "layer_index", "module", "step",
                                          "ts_ns", "end_ns", "duration_ns")]
    events = [{"ph": "X", "name": name, "cat": "layer", "pid": rank, "tid": t, "ts": (ts - t0_ns) / 1000.0,
               "dur": (end - ts) / 1000.0,
               "args": {"layer_type": lt, "layer_index": None if li < 0 else li, "module": mod,
                        "step": None if st < 0 else st, "exclusive_ns": excl, "inclusive_ns": end - ts}}
              for name, rank, lt, li, mod, st, ts, end, excl, t in zip(*cols, tid.tolist())]
    meta = []
    for r, t in sorted(set(zip(layers["rank"].tolist(), tid.tolist()))):
        ti = t % OVERLAP_TID - LAYERS_TID
        kind = "enclosing calls" if ti < 0 else ORDER[ti] if ti < len(ORDER) else "other"
        name = f"layers · {kind}" + (" · overlap" if t >= OVERLAP_TID else "")
        meta += [{"ph": "M", "name": "thread_name", "pid": r, "tid": t, "args": {"name": name}},
                 {"ph": "M", "name": "thread_sort_index", "pid": r, "tid": t, "args": {"sort_index": t}}]
    return events, meta


def _step_lanes(steps: list[dict]) -> list[int]:
    """0 for every step of a rank whose steps do not overlap; else 0/1 alternating in time order
    (a derived step runs until its last kernel ends, which can be after the next step began)."""
    lanes = [0] * len(steps)
    by_rank: dict[int, list[int]] = {}
    for i, w in enumerate(steps):
        by_rank.setdefault(w["rank"], []).append(i)
    for idx in by_rank.values():
        idx.sort(key=lambda i: steps[i]["ts_ns"])
        if any(steps[b]["ts_ns"] < steps[a]["end_ns"] for a, b in itertools.pairwise(idx)):
            for k, i in enumerate(idx):
                lanes[i] = k % 2
    return lanes


def _partial_overlaps(rank, tid, start, end) -> np.ndarray:
    """1 where a kernel starts before the latest end on its track and ends after it, else 0."""
    if len(start) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((start, tid, rank))
    r, t, s, e = rank[order], tid[order], start[order], end[order]
    new_track = np.r_[True, (r[1:] != r[:-1]) | (t[1:] != t[:-1])]
    # running max of ends that restarts on each track: offset every track above the previous one's ends
    track_no = np.cumsum(new_track) - 1
    span = int(e.max() - s.min()) + 1
    shifted = e - s.min() + track_no.astype(np.int64) * span
    prev_max = np.maximum.accumulate(shifted) - track_no.astype(np.int64) * span + s.min()
    prev = np.r_[np.iinfo(np.int64).min, prev_max[:-1]]
    bad = ~new_track & (s < prev) & (e > prev)
    out = np.zeros(len(start), dtype=np.int64)
    out[order] = bad.astype(np.int64)
    return out


def _metadata(rank, tid, type_idx, stream, steps, more_ranks=frozenset()) -> list[dict]:
    meta = []
    ranks = sorted(set(rank.tolist()) | {w["rank"] for w in steps} | set(more_ranks))
    for r in ranks:
        meta += [{"ph": "M", "name": "process_name", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}},
                 {"ph": "M", "name": "process_sort_index", "pid": r, "tid": 0, "args": {"sort_index": r}}]
        used = sorted({lane for w, lane in zip(steps, _step_lanes(steps)) if w["rank"] == r})
        for lane in used:
            name = "steps" if used == [0] else ("steps · even", "steps · odd")[lane]
            meta += [{"ph": "M", "name": "thread_name", "pid": r, "tid": STEPS_TID + lane, "args": {"name": name}},
                     {"ph": "M", "name": "thread_sort_index", "pid": r, "tid": STEPS_TID + lane,
                      "args": {"sort_index": lane}}]
    if len(tid):
        tracks = np.unique(np.stack([rank, tid, type_idx, stream], axis=1), axis=0)
        for r, t, ti, s in tracks.tolist():
            lt = ORDER[ti] if ti < len(ORDER) else "other"
            name = f"{lt} · stream {s}" + (" · overlap" if t >= OVERLAP_TID else "")
            meta += [{"ph": "M", "name": "thread_name", "pid": r, "tid": t, "args": {"name": name}},
                     {"ph": "M", "name": "thread_sort_index", "pid": r, "tid": t, "args": {"sort_index": t}}]
    return meta


def to_json(doc: dict) -> bytes:
    """The trace document as compact JSON bytes."""
    import orjson

    return orjson.dumps(doc)
