"""Saving and loading baselines (tables `baselines`, `baseline_groups` of schema.sql).

A baseline pools one or more runs. It keeps, per grouping ('layer_type', 'layer', 'kernel') and
group, up to MAX_SAMPLES sorted durations with the step (cluster) and the run (part) of each: all
of them, or a uniform random subsample without replacement seeded by the baseline's name, group
and key, so the same runs always give the same baseline. Beside them: what was measured (measure,
device, model) and what the warm-up left out, so that `check` compares like with like.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

import numpy as np

from hybridscope.errors import BadInput, NotFound
from hybridscope.store import db

MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class Samples:
    """Per-group sorted durations (ns) of one run or baseline, with its throughput.

    `clusters[g]` is aligned with `groups[g]`: the step each sample belongs to (-1: none known);
    `parts[g]` the baseline run it came from (0..n_runs-1). `info` says what was measured:
    measure, device, model, run_ids, warmup (what the warm-up left out)."""

    groups: dict[str, np.ndarray]
    totals: dict[str, int]  # all events' time per group, even when samples were subsampled
    counts: dict[str, int]
    throughput: float | None
    throughput_unit: str | None
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    n_runs: int = 1
    info: dict = field(default_factory=dict)

    def cluster(self, g: str) -> np.ndarray:
        """The steps of group g's samples (-1 each when unknown)."""
        got = self.clusters.get(g)
        return got if got is not None else np.full(len(self.groups[g]), -1, dtype=np.int64)

    def part(self, g: str) -> np.ndarray:
        got = self.parts.get(g)
        return got if got is not None else np.zeros(len(self.groups[g]), dtype=np.int64)


def pool(runs: list[Samples]) -> Samples:
    """Several runs' Samples as one baseline: samples concatenated and sorted, each tagged with its
    run (part) and its step made distinct across runs; totals and counts summed; mean throughput."""
    if len(runs) == 1:
        return runs[0]
    groups, clusters, parts, totals, counts = {}, {}, {}, {}, {}
    for g in sorted({g for s in runs for g in s.groups}):
        vals, cl, pa = [], [], []
        for j, s in enumerate(runs):
            if g in s.groups:
                vals.append(s.groups[g])
                c = s.cluster(g)
                cl.append(np.where(c >= 0, c + (j << 44), -1))
                pa.append(np.full(len(s.groups[g]), j, dtype=np.int64))
        v = np.concatenate(vals)
        order = np.argsort(v, kind="stable")
        groups[g], clusters[g], parts[g] = v[order], np.concatenate(cl)[order], np.concatenate(pa)[order]
        totals[g] = sum(s.totals.get(g, 0) for s in runs)
        counts[g] = sum(s.counts.get(g, 0) for s in runs)
    thr = [s.throughput for s in runs if s.throughput is not None]
    units = {s.throughput_unit for s in runs if s.throughput is not None}
    info = {**runs[0].info, "run_ids": [i for s in runs for i in s.info.get("run_ids", [])],
            "warmup": [w for s in runs for w in (s.info.get("warmup") or [])]}
    return Samples(groups, totals, counts, float(np.mean(thr)) if thr and len(units) == 1 else None,
                   units.pop() if thr and len(units) == 1 else None, clusters, parts, len(runs), info)


def subsample(sorted_d: np.ndarray, seed_text: str) -> np.ndarray:
    """Indices of at most MAX_SAMPLES values, uniformly without replacement, seeded by `seed_text`;
    ascending (so the values they pick stay sorted)."""
    if len(sorted_d) <= MAX_SAMPLES:
        return np.arange(len(sorted_d))
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    return np.sort(rng.choice(len(sorted_d), MAX_SAMPLES, replace=False))


def save(con, name: str, run_id: int, per: dict[str, Samples], *, rank: int | None = None,
         force: bool = False, label: str | None = None) -> dict:
    """Store the baseline `name` of run `run_id` (the first of the runs pooled in `per`, see
    `pool`) from its samples `per` grouping, in one transaction.

    `label` names the run; by default it is read from `con`'s runs table (the run's own store).

    An existing name is replaced only with `force`; otherwise BadInput says how.
    """
    if not name or not name.strip():
        raise BadInput("a baseline needs a non-empty --name")
    exists = con.execute("SELECT count(*) FROM baselines WHERE name = ?", [name]).fetchall()[0][0]
    if exists and not force:
        raise BadInput(f"baseline {name!r} exists; will not overwrite without --force")
    if not per["layer_type"].groups:
        raise BadInput(f"run {run_id} has no GPU events or layer timings to keep as a baseline")
    if label is None:
        rows = con.execute("SELECT label FROM runs WHERE run_id = ?", [run_id]).fetchall()
        label = rows[0][0] if rows else None
    top = per["layer_type"]
    info = top.info
    with db.transaction(con):
        con.execute("DELETE FROM baseline_groups WHERE name = ?", [name])
        con.execute("DELETE FROM baselines WHERE name = ?", [name])
        con.execute(
            "INSERT INTO baselines (name, run_id, rank, run_label, throughput, throughput_unit, run_ids, measure,"
            " device, model, warmup) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, run_id, rank, label, top.throughput, top.throughput_unit, info.get("run_ids") or [run_id],
             info.get("measure"), info.get("device"), info.get("model"), json.dumps(info.get("warmup") or [])])
        for by, s in per.items():
            for k in sorted(s.groups):  # one row per group: a list column does not scan from numpy
                keep = subsample(s.groups[k], f"{name}/{by}/{k}")
                con.execute("INSERT INTO baseline_groups (name, group_by, group_key, n, total_ns, samples, clusters,"
                            " parts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [name, by, k, s.counts[k], s.totals[k], s.groups[k][keep].tolist(),
                             s.cluster(k)[keep].tolist(), s.part(k)[keep].tolist()])
    return {"name": name, "run_id": run_id, "runs": top.n_runs, "groups": len(top.groups),
            "samples": sum(min(c, len(d)) for c, d in zip(top.counts.values(), top.groups.values()))}


def load(con, name: str, *, by: str = "layer_type") -> Samples:
    """The baseline `name` as Samples; NotFound naming the known baselines otherwise."""
    cur = con.execute("SELECT * FROM baselines WHERE name = ?", [name])
    head = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
    if not head:
        known = ", ".join(names(con)) or "none"
        raise NotFound(f"no baseline named {name!r} (known: {known}); create it with `hybridscope baseline save`")
    h = head[0]
    cur = con.execute("SELECT * FROM baseline_groups WHERE name = ? AND group_by = ?", [name, by])
    rows = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
    run_ids = list(h.get("run_ids") or [h["run_id"]])  # a store saved before the column: one run
    opt = {k: {r["group_key"]: np.asarray(r[k], dtype=np.int64) for r in rows if r.get(k) is not None}
           for k in ("clusters", "parts")}
    return Samples(
        groups={r["group_key"]: np.asarray(r["samples"], dtype=np.int64) for r in rows},
        totals={r["group_key"]: int(r["total_ns"]) for r in rows},
        counts={r["group_key"]: int(r["n"]) for r in rows},
        throughput=h["throughput"],
        throughput_unit=h["throughput_unit"],
        clusters=opt["clusters"], parts=opt["parts"], n_runs=len(run_ids),
        info={"run_ids": run_ids, "measure": h.get("measure"), "device": h.get("device"), "model": h.get("model"),
              "warmup": json.loads(h["warmup"]) if h.get("warmup") else []},
    )


def names(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM baselines ORDER BY name").fetchall()]


def listing(con) -> list[tuple]:
    """(name, runs, rank, label, created_at, groups, throughput, unit) per baseline; runs the list of run ids."""
    return con.execute(
        """SELECT b.name, coalesce(b.run_ids, [b.run_id]), b.rank, b.run_label, b.created_at,
                  (SELECT count(*) FROM baseline_groups g WHERE g.name = b.name AND g.group_by = 'layer_type'),
                  b.throughput, b.throughput_unit
           FROM baselines b ORDER BY b.name""").fetchall()
