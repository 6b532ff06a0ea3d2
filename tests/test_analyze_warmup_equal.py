"""The warm-up rule as restructured for speed (first calls found once in detect, steps settled in
numpy) gives the answers of its first form, kept here as the reference, on real traces."""

import numpy as np
import pytest

from hybridscope.analyze import warmup
from hybridscope.analyze.measures import MEASURES, measure_of
from hybridscope.analyze.stats import quantile_cont
from hybridscope.cli import main
from hybridscope.store import db

TRACES = [("ep2_bal_rank0.pt.trace.json.gz", "ep2_bal_rank1.pt.trace.json.gz"),
          ("granitemoehybrid.pt.trace.json.gz",), ("jamba.pt.trace.json.gz",),
          ("external/hta_ns_resolution_trace_rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",),
          ("external/tracelens_b200_vllm_gptoss_eager.pt.trace.json.gz",),
          ("external/hta_nccl_parser_config_nccl_data.json.gz",),
          ("external/hta_amd_trace_mi250_minitoy_train_ROCm6_2_kineto.json.gz",)]

# the first form of the first-call rule: a median per (rank, name) inside every query
_REFERENCE_FIRST = """
    wu_cut AS (SELECT unnest($wu_ranks) AS rank, unnest($wu_cuts) AS cut_ns),
    e0 AS (SELECT e.*, e.ts_ns < coalesce(c.cut_ns, -4611686018427387904) AS in_warm_steps
           FROM events e LEFT JOIN wu_cut c ON e.rank = c.rank WHERE e.run_id = $run AND {predicate}),
    e1 AS (SELECT rank, name, quantile_cont(duration_ns, 0.5) AS med, arg_min(event_id, ts_ns) AS first_id,
                  arg_min(duration_ns, ts_ns) AS first_ns
           FROM e0 WHERE NOT in_warm_steps GROUP BY rank, name),
    e1_warm AS (SELECT rank, first_id AS event_id FROM e1 WHERE med > 0 AND first_ns > 10.0 * med),
    ev AS (SELECT e0.*, e0.in_warm_steps OR w.event_id IS NOT NULL AS warm
           FROM e0 LEFT JOIN e1_warm w ON e0.rank = w.rank AND e0.event_id = w.event_id)"""


def _reference_warm_steps(ws, per_type, rank):
    """The first form of warmup.warm_steps: dicts per step, a Python loop."""
    if len(ws) < 2:
        return 0
    lat = [w["end_ns"] - w["ts_ns"] for w in ws]
    phase = [w["phase"] or "unknown" for w in ws]
    types = [per_type.get((rank, w["step"]), {}) if w["sampled"] else {} for w in ws]
    late = range(len(ws) // 2, len(ws))
    med = lambda v: quantile_cont(np.sort(np.asarray(v, dtype=np.float64)), warmup.REF_Q)  # the reference quantile
    ref_lat, ref_type = {}, {}
    for ph in set(phase):
        idx = [i for i in late if phase[i] == ph] or [i for i in range(len(ws)) if phase[i] == ph]
        ref_lat[ph] = med([lat[i] for i in idx])
        for lt in {t for i in idx for t in types[i]}:
            ref_type[(ph, lt)] = med([types[i][lt] for i in idx if lt in types[i]])
    settled = [lat[i] <= 1.5 * ref_lat[phase[i]]
               and all(ns <= 1.5 * ref_type.get((phase[i], lt), np.inf) for lt, ns in types[i].items())
               for i in range(len(ws))]
    for j in range(min(len(ws) // 2, len(ws) - 3) + 1):
        if all(settled[j:j + 3]):
            return j
    return 0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from paths import TRACES as ROOT

    out = []
    for names in TRACES:
        paths = [ROOT / n for n in names]
        if not all(p.exists() for p in paths):
            continue
        path = tmp_path_factory.mktemp("wu") / "s.duckdb"
        with pytest.raises(SystemExit) as e:
            main(["import", *map(str, paths), "--db", str(path)])
        assert e.value.code == 0
        out.append(path)
    if not out:
        pytest.skip(f"{ROOT} not present")
    return out


def test_restructured_rule_equals_its_first_form(stores):
    found_first = found_steps = 0
    for path in stores:
        con = db.open_readonly(path)
        for (run,) in con.execute("SELECT run_id FROM runs").fetchall():
            wu = warmup.detect(con, run)
            by_rank = {}
            for w in warmup._windows(con, run):
                by_rank.setdefault(w["rank"], []).append(w)
            sums = warmup._step_sums(con, run)
            per_type = {(int(r), int(s)): {} for r, s in zip(sums["rank"], sums["step"])}
            for r, s, lt, ns in zip(sums["rank"], sums["step"], sums["lt"], sums["ns"]):
                per_type[(int(r), int(s))][lt] = int(ns)
            want = {r: _reference_warm_steps(sorted(ws, key=lambda w: w["ts_ns"]), per_type, r)
                    for r, ws in by_rank.items()}
            assert wu.steps == want
            found_steps += sum(want.values())
            pred = MEASURES[measure_of(con, run)]
            new = con.execute(f"WITH {warmup.events_cte(pred, clusters=False)} SELECT rank, event_id, warm FROM ev",
                              {"run": run, **wu.params()}).fetchall()
            ref_params = {k: v for k, v in wu.params().items() if k in ("wu_ranks", "wu_cuts")}
            old = con.execute(f"WITH {_REFERENCE_FIRST.format(predicate=pred)} SELECT rank, event_id, warm FROM ev",
                              {"run": run, **ref_params}).fetchall()
            assert sorted(new) == sorted(old)
            found_first += len(wu.first)
        con.close()
    assert found_first > 0 and found_steps > 0  # the traces exercise both parts of the rule
