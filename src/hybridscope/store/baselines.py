"""Saving and loading baselines (tables `baselines`, `baseline_groups` of schema.sql).

A baseline keeps, per grouping ('layer_type', 'layer', 'kernel') and group, up to MAX_SAMPLES
sorted durations: all of them, or a uniform random subsample without replacement seeded by the
baseline's name, group and key, so the same run always gives the same baseline.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from hybridscope.errors import BadInput, NotFound
from hybridscope.store import db

MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class Samples:
    """Per-group sorted durations (ns) of one run or baseline, with its throughput."""

    groups: dict[str, np.ndarray]
    totals: dict[str, int]  # all events' time per group, even when samples were subsampled
    counts: dict[str, int]
    throughput: float | None
    throughput_unit: str | None


def subsample(sorted_d: np.ndarray, seed_text: str) -> np.ndarray:
    """At most MAX_SAMPLES values, uniformly without replacement, seeded by `seed_text`; sorted."""
    if len(sorted_d) <= MAX_SAMPLES:
        return sorted_d
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    return np.sort(rng.choice(sorted_d, MAX_SAMPLES, replace=False))


def save(con, name: str, run_id: int, per: dict[str, Samples], *, rank: int | None = None,
         force: bool = False, label: str | None = None) -> dict:
    """Store the baseline `name` of run `run_id` from its samples `per` grouping, in one transaction.

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
    with db.transaction(con):
        con.execute("DELETE FROM baseline_groups WHERE name = ?", [name])
        con.execute("DELETE FROM baselines WHERE name = ?", [name])
        con.execute(
            "INSERT INTO baselines (name, run_id, rank, run_label, throughput, throughput_unit)"
            " VALUES (?, ?, ?, ?, ?, ?)", [name, run_id, rank, label, top.throughput, top.throughput_unit])
        for by, s in per.items():
            for k in sorted(s.groups):  # one row per group: a list column does not scan from numpy
                con.execute("INSERT INTO baseline_groups VALUES (?, ?, ?, ?, ?, ?)",
                            [name, by, k, s.counts[k], s.totals[k], subsample(s.groups[k], f"{name}/{by}/{k}").tolist()])
    return {"name": name, "run_id": run_id, "groups": len(top.groups),
            "samples": sum(min(c, len(d)) for c, d in zip(top.counts.values(), top.groups.values()))}


def load(con, name: str, *, by: str = "layer_type") -> Samples:
    """The baseline `name` as Samples; NotFound naming the known baselines otherwise."""
    head = con.execute("SELECT throughput, throughput_unit FROM baselines WHERE name = ?", [name]).fetchall()
    if not head:
        known = ", ".join(names(con)) or "none"
        raise NotFound(f"no baseline named {name!r} (known: {known}); create it with `hybridscope baseline save`")
    rows = con.execute(
        "SELECT group_key, n, total_ns, samples FROM baseline_groups WHERE name = ? AND group_by = ?",
        [name, by]).fetchall()
    return Samples(
        groups={k: np.asarray(s, dtype=np.int64) for k, _, _, s in rows},
        totals={k: int(t) for k, _, t, _ in rows},
        counts={k: int(n) for k, n, _, _ in rows},
        throughput=head[0][0],
        throughput_unit=head[0][1],
    )


def names(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM baselines ORDER BY name").fetchall()]


def listing(con) -> list[tuple]:
    """(name, run_id, rank, label, created_at, groups, throughput, unit) per baseline."""
    return con.execute(
        """SELECT b.name, b.run_id, b.rank, b.run_label, b.created_at,
                  (SELECT count(*) FROM baseline_groups g WHERE g.name = b.name AND g.group_by = 'layer_type'),
                  b.throughput, b.throughput_unit
           FROM baselines b ORDER BY b.name""").fetchall()
