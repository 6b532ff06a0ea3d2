"""Every SSM / linear-attention / hybrid family of the installed transformers, captured in both modes.

The list comes from transformers' registry (hf_families.families), so it grows with transformers.
Each family is built tiny (4 layers, hidden 64, a per-layer pattern holding every layer kind it
has), found the way `hybridscope trace` finds a model (live.find.Finder, no name given), and
one short greedy `generate` is captured in layers and in kernels mode (CPU: the profiler's CPU ops).
Every layer index must then carry exactly the mixer types its config says (`mamba` for every
recurrent mixer: Mamba, delta rule, linear / lightning attention, RG-LRU, RWKV, mLSTM, short conv;
`attention` for softmax attention), MoE types exactly where the config routes to experts, and no
`moe_comm` anywhere (one process, no ranks). The families are printed (`-s`, or the summary).
"""

from __future__ import annotations

import pytest
import torch
from capture_models import latest_run, rows
from hf_families import expected, families, tiny

import hybridscope
from hybridscope.live.find import Finder

pytest.importorskip("transformers")

MIXERS = {"mamba", "attention"}
MOE = {"moe_router", "moe_experts"}
VARIANTS = {"granitemoehybrid-dense": ("granitemoehybrid", {"num_local_experts": 0})}
FAMILIES = families() + sorted(VARIANTS)
print(f"\nSSM / hybrid families of transformers: {len(FAMILIES)}: {', '.join(FAMILIES)}")


def _run(model, ids) -> None:
    if hasattr(model, "generate"):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                       do_sample=False, pad_token_id=0)
    else:  # a text base model without an LM head: a prompt pass, then one more
        model(ids)
        model(ids[:, :3])


def _types_by_index(con, run: int, mode: str) -> dict[int, set[str]]:
    source = "layer" if mode == "layers" else "cpu"
    got = rows(con, "SELECT layer_index, list(DISTINCT layer_type) FROM events WHERE run_id = ? AND source = ? "
                    "AND layer_index IS NOT NULL AND layer_type IS NOT NULL GROUP BY 1", [run, source])
    return {i: set(t) for i, t in got}


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """family -> (expected per layer, {mode: types by index}, {mode: moe_comm count}); built lazily."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            key, extra = VARIANTS.get(family, (family, {}))
            model, config = tiny(key, **extra)
            ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(0))
            db = tmp_path_factory.mktemp(family) / "run.duckdb"
            found, comm = {}, {}
            with torch.no_grad():
                for mode in ("layers", "kernels"):
                    with hybridscope.capture(db=db, mode=mode, sample_every=1, quiet=True) as cap:
                        finder = Finder(cap)
                        try:
                            _run(model, ids)
                        finally:
                            finder.remove()
                    assert finder.found is model, f"{family}: the model was not found"
                    con, run = latest_run(db)
                    found[mode] = _types_by_index(con, run, mode)
                    comm[mode] = rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND layer_type = 'moe_comm'",
                                      [run])[0][0]
                    con.close()
            cache[family] = (expected(config), found, comm)
        return cache[family]

    return get


@pytest.mark.parametrize("mode", ["layers", "kernels"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_index_has_the_types_its_config_says(captured, family, mode):
    truth, found, comm = captured(family)
    got = found[mode]
    assert comm[mode] == 0, f"{family} ({mode}): moe_comm in a single process"
    assert sorted(got) == list(range(len(truth))), f"{family} ({mode}): layer indices {sorted(got)}"
    wrong = {i: sorted(got[i] & (MIXERS | MOE)) for i, (mixers, routes) in enumerate(truth)
             if got[i] & MIXERS != mixers or (got[i] & MOE == MOE) != routes or (not routes and got[i] & MOE)}
    want = {i: sorted(mixers | (MOE if routes else set())) for i, (mixers, routes) in enumerate(truth) if i in wrong}
    assert not wrong, f"{family} ({mode}): got {wrong}, config says {want}"


# ------------------------------------------------------------------------------ the engine's presets
ENGINE_TYPES = {"M": ({"mamba"}, False), "*": ({"attention"}, False), "E": (set(), True), "-": (set(), False),
                "P": ({"mamba", "attention"}, False)}


@pytest.mark.parametrize("preset", ["tiny", "nemotron3-nano-mini", "jamba-mini", "falcon-h1-mini"])
def test_engine_presets_in_kernels_mode_have_their_pattern_and_no_moe_comm(tmp_path, preset):
    """Each preset's real layer pattern (widths of 'tiny', first 16 layers), served in one process
    under kernels-mode capture: every layer index has its pattern's types, and the local sort /
    gather dispatch is expert work (`moe_experts`), never `moe_comm`."""
    from capture_models import run_engine

    from hybridscope.engine.config import PRESETS, EngineConfig
    from hybridscope.engine.model import build_model

    sizes = {k: v for k, v in PRESETS["tiny"].items() if k not in ("pattern", "n_experts", "top_k")}
    pattern = PRESETS[preset]["pattern"][:16]
    model = build_model(EngineConfig.from_preset(preset, **sizes, pattern=pattern), device="cpu")
    with hybridscope.capture(db=tmp_path / "e.duckdb", model=model, mode="kernels", sample_every=1, quiet=True):
        run_engine(model, n_requests=2, new_tokens=2)
    con, run = latest_run(tmp_path / "e.duckdb")
    got = _types_by_index(con, run, "kernels")
    comm = rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND layer_type = 'moe_comm'", [run])[0][0]
    assert comm == 0
    assert sorted(got) == list(range(len(pattern)))
    wrong = {i: sorted(got[i] & (MIXERS | MOE)) for i, ch in enumerate(pattern)
             if got[i] & MIXERS != ENGINE_TYPES[ch][0] or (got[i] & MOE == MOE) != ENGINE_TYPES[ch][1]
             or (not ENGINE_TYPES[ch][1] and got[i] & MOE)}
    assert not wrong, f"{preset} {pattern}: {wrong}"
