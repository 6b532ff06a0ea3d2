"""Structure-aware fuzzing of the three importers (Kineto, nsys, Ingero) and the analyses on what
they import. Used by tests/test_fuzz_import.py (a short slice) and benchmarks/fuzz_import.py (the
long run).

Seeds are real: windows of events of the traces in ../shared/traces and tests/fixtures (Kineto),
the Ingero databases of ../shared/traces/external, and nsys exports laid out by nsys_fixtures in
every vintage. A case applies 1-3 mutations that know the format's structure:

    Kineto  an event field or a top-level key set to a hostile value (integers at every width up
            to 2**64 and beyond, NaN/inf, negative and huge durations and timestamps, unicode,
            null, lists, objects), a field removed or written twice, the file gzipped or not,
            pretty or compact
    SQLite  a cell of any table set to a hostile value (the same integers, REAL, TEXT, BLOB,
            NULL), a column or table dropped, rows duplicated, bytes of a page overwritten

The rule every case must keep (`run_case`): the import ends in success or in ONE line (a
HybridscopeError without a newline) and then the store's row counts are exactly as before; a
successful import can be decomposed and reported (terminal and HTML) without an exception. Anything
else is a "traceback" outcome, with the exception's last frame.
"""

from __future__ import annotations

import gzip
import random
import sqlite3
import traceback
from dataclasses import dataclass
from pathlib import Path

import orjson
from damage import counts
from nsys_fixtures import VINTAGES, as_kineto, hybrid_model, write
from paths import EXTERNAL, FIXTURES, TRACES

from hybridscope.errors import HybridscopeError

INTS = (0, 1, -1, 127, 128, -129, 2**15, 2**16, -(2**31), 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62,
        2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**30))
FLOATS = (0.5, -0.5, 1e-300, 1e300, -1e300, 1.7976931348623157e308, -0.0)
TEXTS = ("", "0", "-5", "1e400", "NaN", "ünïcödé ⚡ 𝔘", "\u0000", "a" * 5000, "'; DROP TABLE events; --",
         "kernel\nname", "\ud7ff")
NON_JSON = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "01", "0x10")  # written as bare tokens
EVENT_KEYS = ("ts", "dur", "pid", "tid", "name", "cat", "ph", "args")
ARG_KEYS = ("device", "stream", "correlation", "External id", "graph id", "Python id", "grid", "block",
            "In msg nelems", "Group size", "Process Group Ranks", "name")
TOP_KEYS = ("distributedInfo.rank", "distributedInfo.world_size", "baseTimeNanoseconds", "deviceProperties",
            "displayTimeUnit", "traceEvents", "schemaVersion", "distributedInfo")
KINETO_SEEDS = ("jamba.pt.trace.json.gz", "granitemoehybrid.pt.trace.json.gz", "ep2_bal_rank0.pt.trace.json.gz",
                "external/hta_nccl_parser_config_nccl_data.json.gz",
                "external/hta_amd_trace_mi250_minitoy_train_ROCm6_2_kineto.json.gz",
                "external/hta_ns_resolution_trace_rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",
                "external/tracelens_b200_vllm_gptoss_eager.pt.trace.json.gz")
INGERO_SEEDS = ("ingero_sample-cluster.db", "ingero_vllm-37343-logprobs-amplification.db")
WINDOW = 300  # events of a Kineto seed kept per case (a window at a random offset)


def hostile(rng: random.Random):
    """A value a JSON field or SQLite cell should not hold (or just barely can)."""
    pick = rng.random()
    if pick < 0.45:
        return rng.choice(INTS)
    if pick < 0.6:
        return rng.choice(FLOATS)
    if pick < 0.8:
        return rng.choice(TEXTS)
    return rng.choice((None, True, [], [1, "x"], {}, {"a": {"b": [2**64]}}))


@dataclass(frozen=True)
class Case:
    """One fuzz case: the format, its seed and the random stream that picks its mutations."""

    fmt: str
    seed: str
    number: int

    def rng(self) -> random.Random:
        return random.Random(f"{self.fmt}/{self.seed}/{self.number}")


@dataclass
class Outcome:
    case: Case
    result: str  # 'imported', 'refused' or 'traceback'
    detail: str
    mutations: tuple[str, ...] = ()


# -- seeds -------------------------------------------------------------------------------------


class Seeds:
    """The parsed seeds, loaded once (a Kineto seed's events are sliced per case)."""

    def __init__(self):
        self.kineto: dict[str, dict] = {}
        for name in KINETO_SEEDS:
            path = TRACES / name
            if path.exists():
                self.kineto[name] = orjson.loads(gzip.decompress(path.read_bytes()))
        fixture = FIXTURES / "nemotronh_with_stack.pt.trace.json.gz"
        self.kineto["fixtures/nemotronh"] = orjson.loads(gzip.decompress(fixture.read_bytes()))
        self.kineto["nsys_fixtures.as_kineto"] = as_kineto(hybrid_model())
        self.ingero = {name: EXTERNAL / name for name in INGERO_SEEDS if (EXTERNAL / name).exists()}
        self.nsys = tuple(VINTAGES)

    def cases(self, n: int, start: int = 0) -> list[Case]:
        """`n` cases spread over formats and seeds: Kineto 40%, nsys 30%, Ingero 30%."""
        plan = [("kineto", s) for s in self.kineto] * 3 + [("nsys", v) for v in self.nsys] * 5
        plan += [("ingero", s) for s in self.ingero] * 7 or [("nsys", v) for v in self.nsys]
        return [Case(*plan[i % len(plan)], number=i) for i in range(start, start + n)]


# -- Kineto ------------------------------------------------------------------------------------


def kineto_case(seeds: Seeds, case: Case, folder: Path) -> tuple[Path, list[str]]:
    rng = case.rng()
    doc = dict(seeds.kineto[case.seed])
    events = doc.get("traceEvents") or []
    lo = rng.randrange(max(len(events) - WINDOW, 1))
    events = [dict(e) for e in events[lo:lo + WINDOW]]
    doc["traceEvents"] = events
    done, tokens = [], {}
    for _ in range(rng.randint(1, 3)):
        done.append(_mutate_kineto(rng, doc, events, tokens))
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if rng.random() < 0.7 else 0, default=str)
    for marker, token in tokens.items():  # bare tokens JSON cannot hold (NaN, 1e999, 01)
        text = text.replace(orjson.dumps(marker), token.encode())
    gz = rng.random() < 0.5
    path = folder / f"case{case.number}.json{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(text, compresslevel=1) if gz else text)
    return path, done


def _token(tokens: dict, text: str) -> str:
    """A marker string that the writer replaces by `text` written bare (not JSON orjson writes)."""
    marker = f"__token{len(tokens)}__"
    tokens[marker] = text
    return marker


def _bare_big_ints(value, tokens: dict):
    """`value` with integers beyond 64 bits as bare tokens (orjson refuses them; JSON does not)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return _token(tokens, str(value))
    if isinstance(value, list):
        return [_bare_big_ints(v, tokens) for v in value]
    if isinstance(value, dict):
        return {k: _bare_big_ints(v, tokens) for k, v in value.items()}
    return value


def _shown(value, tokens: dict) -> str:
    return repr(tokens[value] if isinstance(value, str) and value in tokens else value)[:40]


def _mutate_kineto(rng: random.Random, doc: dict, events: list[dict], tokens: dict) -> str:
    what = rng.random()
    value = _bare_big_ints(hostile(rng), tokens)
    if rng.random() < 0.12:
        value = _token(tokens, rng.choice(NON_JSON))
    if what < 0.15 or not events:
        key = rng.choice(TOP_KEYS)
        if "." in key:
            outer, inner = key.split(".")
            doc[outer] = dict(doc[outer]) if isinstance(doc.get(outer), dict) else {}
            doc[outer][inner] = value
        else:
            doc[key] = value
        return f"top {key} = {_shown(value, tokens)}"
    ev = events[rng.randrange(len(events))]
    if what < 0.25:
        key = rng.choice(EVENT_KEYS)
        ev.pop(key, None)
        return f"event without {key}"
    if what < 0.35:  # a negative or huge duration / timestamp, the cases a profiler bug writes
        key = rng.choice(("ts", "dur"))
        ev[key] = rng.choice((-5, -1e-3, -(2**63) / 1000, 2**63 / 1000, 9.3e15, 1e18, -9.3e15))
        return f"event {key} = {ev[key]!r}"
    if what < 0.6:
        key = rng.choice(ARG_KEYS)
        ev["args"] = dict(ev["args"]) if isinstance(ev.get("args"), dict) else {}
        ev["args"][key] = value
        return f"event args.{key} = {_shown(value, tokens)}"
    if what < 0.9:
        key = rng.choice(EVENT_KEYS)
        ev[key] = value
        return f"event {key} = {_shown(value, tokens)}"
    events.append(dict(ev))  # a duplicated event
    return "event duplicated"


# -- SQLite (nsys and Ingero) -----------------------------------------------------------------


def sqlite_case(seeds: Seeds, case: Case, folder: Path) -> tuple[Path, list[str]]:
    rng = case.rng()
    path = folder / f"case{case.number}.{'sqlite' if case.fmt == 'nsys' else 'db'}"
    if case.fmt == "nsys":
        write(path, hybrid_model(steps=rng.randint(1, 3), pythooks=rng.random() < 0.3), vintage=case.seed)
    else:
        path.write_bytes(seeds.ingero[case.seed].read_bytes())
    done = []
    con = sqlite3.connect(path)
    try:
        for _ in range(rng.randint(1, 3)):
            done.append(_mutate_sqlite(rng, con))
            con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    if rng.random() < 0.1:
        done.append(_corrupt_page(rng, path))
    return path, done


def _mutate_sqlite(rng: random.Random, con: sqlite3.Connection) -> str:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%'")]
    tables = [t for t in tables if con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]] or tables
    table = rng.choice(tables)
    cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
    what = rng.random()
    if what < 0.8:
        col = rng.choice(cols)
        value = rng.choice((rng.choice(INTS), rng.choice(FLOATS), rng.choice(TEXTS), None,
                            b"\x00\xff blob", float("nan"), float("inf"), float("-inf")))
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            value = str(value)  # SQLite integers stop at 64 bits: the text of a bigger one
        everywhere = rng.random() < 0.2
        where = "" if everywhere else f' WHERE rowid = (SELECT rowid FROM "{table}" ORDER BY random() LIMIT 1)'
        try:
            con.execute(f'UPDATE "{table}" SET "{col}" = ?{where}', [value])
        except sqlite3.Error as e:  # NOT NULL, UNIQUE...: the schema refused it
            return f"{table}.{col} = {value!r:.30} refused by SQLite ({e})"
        return f"{table}.{col} = {value!r:.40}{' (all rows)' if everywhere else ''}"
    if what < 0.9 and len(cols) > 1:
        col = rng.choice(cols)
        try:
            con.execute(f'ALTER TABLE "{table}" DROP COLUMN "{col}"')
        except sqlite3.Error:
            con.execute(f'DROP TABLE "{table}"')
            return f"table {table} dropped"
        return f"column {table}.{col} dropped"
    try:
        con.execute(f'INSERT INTO "{table}" SELECT * FROM "{table}" LIMIT 50')
    except sqlite3.Error as e:
        return f"rows of {table} not duplicated ({e})"
    return f"rows of {table} duplicated"


def _corrupt_page(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    at = rng.randrange(100, len(data))
    n = rng.randint(1, 64)
    data[at:at + n] = rng.randbytes(n)
    path.write_bytes(bytes(data))
    return f"{n} bytes overwritten at {at}"


# -- running -----------------------------------------------------------------------------------


def make_case(seeds: Seeds, case: Case, folder: Path) -> tuple[Path, list[str]]:
    return kineto_case(seeds, case, folder) if case.fmt == "kineto" else sqlite_case(seeds, case, folder)


def run_case(con, seeds: Seeds, case: Case, folder: Path, *, report: bool = True) -> Outcome:
    """Build the case's file, import it into the open store `con` and check the rule (module doc)."""
    from hybridscope.ingest import import_files

    path, done = make_case(seeds, case, folder)
    before = counts(con)
    try:
        try:
            (res,) = import_files(con, [path], progress=False)
        except HybridscopeError as e:
            if "\n" in e.message or not e.message.strip():
                return Outcome(case, "traceback", f"message of {len(e.message.splitlines())} lines", tuple(done))
            if counts(con) != before:
                return Outcome(case, "traceback", f"store changed by a refused file: {e.message}", tuple(done))
            return Outcome(case, "refused", e.message, tuple(done))
        except Exception as e:  # noqa: BLE001 - the bug this harness looks for
            return Outcome(case, "traceback", _where(e), tuple(done))
        if report:
            problem = _analyse(con, res.run_id)
            if problem is not None:
                return Outcome(case, "traceback", problem, tuple(done))
        return Outcome(case, "imported", f"{res.n_events} events", tuple(done))
    finally:
        path.unlink(missing_ok=True)


def _analyse(con, run_id: int) -> str | None:
    """Decompose and report the imported run (terminal and HTML): None, or what raised."""
    import io

    from rich.console import Console

    from hybridscope.analyze.decompose import BY, decompose
    from hybridscope.analyze.report import build_report
    from hybridscope.present import html, terminal

    try:
        for by in BY:
            decompose(con, run_id, by=by)
        rep = build_report(con, run_id)
        terminal.render(rep, Console(file=io.StringIO(), width=120))
        html.render(rep)
    except HybridscopeError as e:
        return f"analysis refused an imported run: {e.message}"
    except Exception as e:  # noqa: BLE001
        return "analysis: " + _where(e)
    return None


def _where(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}{at}"
