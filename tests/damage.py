"""The import rule every format's damage tests check: a damaged file is one clean BadInput that leaves
the store exactly as it was, or it imports whole (a flipped byte inside a value can be invisible)."""

from __future__ import annotations

from pathlib import Path

from hybridscope.errors import BadInput
from hybridscope.ingest import import_files

TABLES = ("runs", "run_ranks", "events", "scopes", "steps", "routing", "samples", "requests")


def counts(con) -> dict[str, int]:
    """Rows per store table."""
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


def import_whole_or_nothing(con, path: Path) -> None:
    """Import `path` and assert the rule above."""
    before = counts(con)
    try:
        (res,) = import_files(con, [path], progress=False)
    except BadInput as e:
        assert e.message and "\n" not in e.message
        assert counts(con) == before
        return
    after = counts(con)
    if res.duplicate_of is not None:
        assert after == before
        return
    assert after["events"] == before["events"] + res.n_events
    assert after["run_ranks"] == before["run_ranks"] + 1
