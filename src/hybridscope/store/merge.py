"""Merging per-rank stores into one multi-rank run, and shifting a rank's clock.

Under torchrun every rank captures into its own DuckDB file (one writer per file); `merge`
copies each file's run into one new run of the target store, one rank per source, in one
transaction, with columnar INSERT ... SELECT over the attached files (no rows through Python).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hybridscope.errors import BadInput, NotFound
from hybridscope.store import db

# Tables whose rows belong to one rank of one run; `requests` is per run (taken from one rank).
RANK_TABLES = ("events", "scopes", "steps", "routing", "samples")
TIME_COLUMNS = {"events": ("ts_ns",), "scopes": ("ts_ns", "end_ns"), "steps": ("ts_ns",), "samples": ("ts_ns",)}


@dataclass(frozen=True)
class Source:
    path: Path
    run_id: int
    rank: int
    host: str | None
    n_events: int
    as_rank: int | None = None  # the rank in the merged run (default: the stored one)

    @property
    def target(self) -> int:
        return self.rank if self.as_rank is None else self.as_rank


def inspect(path: Path, run: int | None = None) -> Source:
    """The run (latest, or `run`) of a per-rank store, which must hold exactly one rank."""
    con = db.open_readonly(path)
    try:
        run_id = db.resolve_run(con, run)
        ranks = con.execute("SELECT rank, host, n_events FROM run_ranks WHERE run_id = ?", [run_id]).fetchall()
    finally:
        con.close()
    if len(ranks) != 1:
        raise BadInput(f"{path}: run {run_id} holds {len(ranks)} ranks; merge takes one-rank runs")
    rank, host, n = ranks[0]
    return Source(Path(path), run_id, int(rank), host, int(n or 0))


def merge(con, sources: list[Source], *, label: str | None = None) -> int:
    """Copy every source's run into one new run of `con`'s store; returns the new run id.

    One source copies that run alone (how the demo moves a one-rank run into its store). A source's
    rows take its `target` rank; each rank's notes stay under notes.ranks."<target rank>"."""
    if not sources:
        raise BadInput("merge needs at least one per-rank store")
    ranks = [s.target for s in sources]
    if len(set(ranks)) != len(ranks):
        raise BadInput(f"the stores hold overlapping ranks {sorted(ranks)}: one store per rank")
    for s in sources:
        if not s.path.exists():
            raise NotFound(f"no database at {s.path}")
    ordered = sorted(sources, key=lambda s: s.target)
    aliases = [f"hs_src{i}" for i in range(len(ordered))]
    attached = []
    try:
        for alias, s in zip(aliases, ordered):  # ATTACH/DETACH cannot run inside the transaction
            con.execute(f"ATTACH '{db.sql_path(s.path)}' AS {alias} (READ_ONLY)")
            attached.append(alias)
        with db.transaction(con):
            run_id = db.next_run_id(con)
            for i, (alias, s) in enumerate(zip(aliases, ordered)):
                if i == 0:
                    _copy_run_row(con, alias, s, run_id, label, len(sources))
                    con.execute(f"INSERT INTO requests BY NAME SELECT * REPLACE ({run_id} AS run_id) "
                                f"FROM {alias}.requests WHERE run_id = ?", [s.run_id])
                for table in ("run_ranks", *RANK_TABLES):
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * REPLACE ({run_id} AS run_id, "
                                f"?::INTEGER AS rank) FROM {alias}.{table} WHERE run_id = ?", [s.target, s.run_id])
            _rank_notes(con, run_id, list(zip(aliases, ordered)))
            _refresh_window(con, run_id)
    finally:
        for alias in attached:
            con.execute(f"DETACH {alias}")
    return run_id


def _copy_run_row(con, alias: str, s: Source, run_id: int, label: str | None, n: int) -> None:
    con.execute(
        f"""INSERT INTO runs BY NAME
            SELECT * REPLACE ({run_id} AS run_id, coalesce(?, label) AS label, NULL::INTEGER AS rank,
                              greatest(coalesce(world_size, 1), ?) AS world_size)
            FROM {alias}.runs WHERE run_id = ?""", [label, n, s.run_id])


def _rank_notes(con, run_id: int, pairs: list) -> None:
    """The merged run's notes: the first source's, with every source's rank notes under its target rank."""
    ranks = {}
    for alias, s in pairs:
        (text,) = con.execute(f"SELECT notes FROM {alias}.runs WHERE run_id = ?", [s.run_id]).fetchone()
        own = (json.loads(text) if text else {}).get("ranks", {})
        if str(s.rank) in own:
            ranks[str(s.target)] = own[str(s.rank)]
    (text,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    notes = json.loads(text) if text else {}
    if ranks:
        notes["ranks"] = ranks
    con.execute("UPDATE runs SET notes = ? WHERE run_id = ?", [json.dumps(notes, sort_keys=True), run_id])


def shift_rank(con, run_id: int, rank: int, offset_ns: int) -> None:
    """Add `offset_ns` to every timestamp of one rank of a run, and record it (inside a transaction)."""
    for table, cols in TIME_COLUMNS.items():
        sets = ", ".join(f"{c} = {c} + $off" for c in cols)
        con.execute(f"UPDATE {table} SET {sets} WHERE run_id = $run AND rank = $rank",
                    {"off": offset_ns, "run": run_id, "rank": rank})
    con.execute("""UPDATE run_ranks SET clock_offset_ns = coalesce(clock_offset_ns, 0) + $off,
                   t_start_ns = t_start_ns + $off, t_end_ns = t_end_ns + $off
                   WHERE run_id = $run AND rank = $rank""", {"off": offset_ns, "run": run_id, "rank": rank})
    _refresh_window(con, run_id)


def _refresh_window(con, run_id: int) -> None:
    con.execute("""UPDATE runs SET t_start_ns = w.s, t_end_ns = w.e
                   FROM (SELECT min(t_start_ns) AS s, max(t_end_ns) AS e FROM run_ranks WHERE run_id = $run) w
                   WHERE run_id = $run""", {"run": run_id})

