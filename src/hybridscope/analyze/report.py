"""Everything the report shows, computed once: a `Report` of named Tables, handed to renderers.

The report is declared once, in `SECTIONS`: each `Section` names its HTML heading, the analyses
that compute its tables, and how each renderer shows them (`View`s). `build_report(con, run_id)`
runs every section's analyses on one run; the terminal and HTML renderers (present/terminal.py,
present/html.py) iterate the same list and only format the tables. Adding an analysis to the report
is: the analysis in its module, and its step and views in `SECTIONS`. `hybridscope report` and
`hybridscope demo` both call `build_report`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hybridscope.analyze import advice as advice_mod
from hybridscope.analyze import collectives, conflicts, dashboard, experts, overlap, steps, timeline
from hybridscope.analyze import warmup as warmup_mod
from hybridscope.analyze.decompose import CDF_LEVELS, MEASURES, decompose, measure_of, prepare, steady_cdf
from hybridscope.table import Column, Table, plain


@dataclass(frozen=True)
class Report:
    """The tables of one run's report, and the sections (SECTIONS below) that computed them and
    that the renderers show, in order."""

    run_id: int
    run: dict
    tables: dict[str, Table] = field(default_factory=dict)
    sections: tuple = ()

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def get(self, name: str) -> Table | None:
        return self.tables.get(name)

    def why(self, name: str) -> str | None:
        """Why the table `name` is missing or empty, when the run's data says (`absent`)."""
        t = self.tables.get("absent")
        return next((r[1] for r in t.rows if r[0] == name), None) if t is not None else None

    @property
    def warnings(self) -> list[str]:
        """What the report says first: the decomposition's warnings (attribution coverage)."""
        t = self.tables.get("decompose_layer_type")
        return list(t.meta.get("warnings") or []) if t is not None else []


def latency_cdf(con, run_id: int, *, warmup: int | None = None) -> Table:
    """Per layer type, the continuous quantile of durations at each of CDF_LEVELS: of GPU kernels,
    or of the layer timings of a layers-mode capture (`decompose.measure_of`; meta['measure']); the
    run's warm-up left out (analyze/warmup.py)."""
    measure = measure_of(con, run_id)
    got = steady_cdf(con, run_id, MEASURES[measure], warmup_mod.detect(con, run_id, warmup=warmup))
    rows = [(lt, int(n), q, float(v)) for lt, n, qs in got for q, v in zip(CDF_LEVELS, qs)]
    cols = (Column("layer_type", "str", "", "layer type"), Column("n", "int", "events of the layer type"),
            Column("level", "float", "cumulative probability"), Column("duration_ns", "ns", "quantile at level"))
    return Table("latency_cdf", cols, rows, {"title": "Latency CDF per layer type", "run_id": run_id,
                                              "measure": measure})


# Tables a run cannot have, and why (`absent`): the report says the reason in one line instead of
# drawing an empty frame.
NEEDS_KERNELS = ("overlap", "gap_histogram", "gap_summary", "gap_sites", "top_gaps", "launch_bound",
                 "conflicts", "conflict_pairs")
NEEDS_RANKS = ("per_rank", "rank_waits", "stragglers", "traffic")
NEEDS_ROUTING = ("expert_load", "expert_steps", "expert_correlation")
NEEDS_STEPS = ("step_stack_bins", "phases", "slow_steps")


def absent(ctx: Context) -> Table:
    """One row per report table that is missing or empty for a reason the run's data gives:
    no GPU kernels (a layers-mode capture, host API timings), one rank, no routing, no steps."""
    measure = ctx["decompose_layer_type"].meta.get("measure")
    why = {}
    if measure == "layers":
        why.update(dict.fromkeys(NEEDS_KERNELS, "a layers-mode capture times each module's calls, not GPU "
                                 "kernels: overlap, idle gaps and stream conflicts need kernels "
                                 "(capture with --mode kernels)"))
    elif measure == "host_api":
        why.update(dict.fromkeys(NEEDS_KERNELS, "host API timings only (no GPU kernels): overlap, idle gaps "
                                 "and stream conflicts need a kernel trace"))
    if not ctx.multi_rank:
        why.update(dict.fromkeys(NEEDS_RANKS, "one rank: no all-to-all between ranks, no waits for peers "
                                 "(the per-rank view needs two or more ranks)"))
    why.update({n: "no MoE routing recorded in this run (no router, or routing was not captured)"
                for n in NEEDS_ROUTING if n not in why})
    why.update({n: "no steps recorded in this run" for n in NEEDS_STEPS})
    rows = [(name, reason) for name, reason in why.items()
            if ctx.tables.get(name) is None or not len(ctx.tables[name])]
    return Table("absent", (Column("table", "str", "a report table missing or empty"),
                            Column("reason", "str", "why the run cannot have it")), rows,
                 {"title": "What this run cannot show, and why", "run_id": ctx.run_id})


def run_info(con, run_id: int) -> dict:
    """The run's row (label, source, world size, device, window) as a plain dict."""
    cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    names = [d[0] for d in cur.description]
    row = cur.fetchall()[0]
    info = {n: plain(v) for n, v in zip(names, row) if n not in ("versions", "distributed_info", "notes")}
    info["created_at"] = str(info.get("created_at"))
    info["ranks"] = [r for (r,) in con.execute(
        "SELECT DISTINCT rank FROM events WHERE run_id = ? ORDER BY rank", [run_id]).fetchall()]
    return info


@dataclass
class Context:
    """What a section's analyses see: the store, the run, and the tables computed so far."""

    con: object
    run_id: int
    run: dict
    tables: dict[str, Table] = field(default_factory=dict)
    warmup: int | None = None  # analyze/warmup.py: None the rule, N first steps, 0 keep everything

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    @property
    def multi_rank(self) -> bool:
        return len(self.run["ranks"]) > 1

    def add(self, got: Table | Iterable[Table] | None) -> None:
        for table in (() if got is None else (got,) if isinstance(got, Table) else got):
            self.tables[table.name] = table


Step = Callable[[Context], "Table | Iterable[Table] | None"]


@dataclass(frozen=True)
class View:
    """How a renderer shows one thing of a section.

    kind 'table':    the table `name` (left out when absent or empty), cut to `max_rows` rows
                     (None: the renderer's default; the terminal's is 12, HTML shows all)
    kind 'sentence': one line about the table `name` (present/sentences.py)
    kind 'panel':    a renderer's own block for `name`: 'contrast' (dashboard vs decomposition), 'advice'
    kind 'chart':    an HTML figure drawn from the table `name` (present/html.py CHARTS)
    """

    kind: str
    name: str
    max_rows: int | None = None


def table(name: str, max_rows: int | None = None) -> View:
    return View("table", name, max_rows)


def sentence(name: str) -> View:
    return View("sentence", name)


def panel(name: str) -> View:
    return View("panel", name)


def chart(name: str) -> View:
    return View("chart", name)


@dataclass(frozen=True)
class Section:
    """One part of the report: its HTML heading (None: none), the analyses that compute its tables
    (each `step(ctx)` returns a Table, several, or None), and its views per renderer. In `html`, a
    tuple of views is one row of figures or tables side by side."""

    title: str | None
    analyses: tuple[Step, ...]
    terminal: tuple[View, ...] = ()
    html: tuple[View | tuple[View, ...], ...] = ()


def _multi_rank(ctx: Context):
    """The per-rank view and the collectives, for runs with several ranks."""
    if not ctx.multi_rank:
        return None
    return (per_rank(ctx.con, ctx.run_id, ctx.run["ranks"], warmup=ctx.warmup), collectives.rank_waits(ctx.con, ctx.run_id),
            collectives.stragglers(ctx.con, ctx.run_id), collectives.traffic(ctx.con, ctx.run_id))


def advice_of(tables: dict[str, Table], **options) -> Table:
    """The ranked advice over a report's tables (analyze/advice.py; `options` are the rules'
    thresholds), with the run's wall clock and rank count read from its decomposition."""
    windows = tables["decompose_layer_type"].meta.get("windows_ns") or {}
    wall = max((hi - lo for lo, hi in windows.values()), default=None)  # the run's wall clock, not rank-time
    return advice_mod.advice(tables, wall_ns=wall, n_ranks=max(len(windows), 1), **options)


# The report, in the order it is shown. Analyses run in this order too (a step may use the tables
# of the steps before it); advice comes last, over everything.
SECTIONS: tuple[Section, ...] = (
    Section(None, (
        lambda c: decompose(c.con, c.run_id, by="layer_type", warmup=c.warmup),
        lambda c: dashboard.dashboard(c.con, c.run_id),
        lambda c: dashboard.contrast(c.con, c.run_id, dash=c["dashboard"], decomposition=c["decompose_layer_type"]),
        lambda c: dashboard.duty_cycle(c.con, c.run_id),
    ), terminal=(panel("contrast"),), html=(panel("contrast"),)),
    Section("Decomposition", (_multi_rank,),
            terminal=(table("decompose_layer_type"), table("per_rank"), table("rank_waits"), table("stragglers"),
                      table("traffic")),
            html=(table("decompose_layer_type"), table("per_rank", 12), table("rank_waits", 12),
                  table("stragglers", 12), table("traffic", 12))),
    Section("Latency per layer type and per layer", (
        lambda c: decompose(c.con, c.run_id, by="layer", warmup=c.warmup),
        lambda c: decompose(c.con, c.run_id, by="module", top=24, warmup=c.warmup),
        lambda c: latency_cdf(c.con, c.run_id, warmup=c.warmup),
    ), html=((chart("latency_cdf"), chart("decompose_layer")),)),
    Section("Steps", (
        lambda c: steps.steps(c.con, c.run_id),
        lambda c: steps.step_stack_bins(c.con, c.run_id),
        lambda c: steps.phases(c.con, c.run_id, warmup=c.warmup),
        lambda c: steps.slow_steps(c.con, c.run_id, warmup=c.warmup),
    ), terminal=(table("phases"), table("slow_steps"), sentence("slow_steps")),
       html=(chart("step_stack_bins"), (table("phases"), table("slow_steps")), sentence("slow_steps"))),
    Section("Experts", (
        lambda c: experts.expert_steps(c.con, c.run_id, warmup=c.warmup),
        lambda c: experts.expert_correlation(c.con, c.run_id, c["expert_steps"]),
        lambda c: experts.expert_load(c.con, c.run_id, warmup=c.warmup),
        lambda c: experts.expert_tail(c.con, c.run_id, load=c["expert_load"], warmup=c.warmup),
    ), terminal=(table("expert_correlation"),),
       html=((chart("expert_load"), chart("expert_steps")), table("expert_correlation"))),
    Section("Overlap and gaps", (
        lambda c: overlap.overlap(c.con, c.run_id),
        lambda c: overlap.gaps(c.con, c.run_id).values(),
        lambda c: overlap.launch_bound(c.con, c.run_id),
    ), terminal=(table("overlap"), table("gap_summary"), table("gap_sites"), table("launch_bound")),
       html=((chart("overlap"), chart("gap_histogram")), table("overlap"), table("gap_sites", 10),
             table("top_gaps", 10), table("launch_bound"))),
    Section("Stream conflicts", (
        lambda c: conflicts.conflicts(c.con, c.run_id),
        lambda c: conflicts.conflict_pairs(c["conflicts"]),
    ), terminal=(table("conflict_pairs"), sentence("conflict_pairs")),
       html=(sentence("conflict_pairs"), table("conflict_pairs", 12), table("conflicts", 12))),
    Section("Advice", (lambda c: advice_of(c.tables), absent), terminal=(panel("advice"),), html=(panel("advice"),)),
)


def build_report(con, run_id: int, sections: tuple[Section, ...] = SECTIONS, *,
                 warmup: int | None = None) -> Report:
    """Every table of the report for run `run_id` (which must exist: see store.db.resolve_run);
    its tails without the run's warm-up (`warmup`: analyze/warmup.py)."""
    # the kernel timeline, once for all analyses; the decompositions' pool before it (its doc)
    with timeline.materialized(con, run_id, warmup=warmup, first=lambda: prepare(con, run_id, warmup=warmup)):
        ctx = Context(con, run_id, run_info(con, run_id), warmup=warmup)
        for section in sections:
            for step in section.analyses:
                ctx.add(step(ctx))
        return Report(run_id, ctx.run, ctx.tables, tuple(sections))


def per_rank(con, run_id: int, ranks: list[int] | None = None, *, warmup: int | None = None) -> Table:
    """The per-layer-type decomposition of each rank (`ranks`: all of the run's), stacked: rank
    first, `all` row per rank (and its `warm-up` row)."""
    if ranks is None:
        ranks = sorted(timeline.rank_windows(con, run_id))
    parts = [decompose(con, run_id, by="layer_type", rank=r, warmup=warmup) for r in ranks]
    cols = (Column("rank", "int"),) + parts[0].columns
    rows = [(r, *row) for r, p in zip(ranks, parts) for row in p.rows]
    return Table("per_rank", cols, rows, {"title": "Per rank", "run_id": run_id, "ranks": ranks})
