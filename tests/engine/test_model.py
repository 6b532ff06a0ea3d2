"""The model: cached decode equals a full forward pass; presets build; configs validate."""

from __future__ import annotations

import pytest
import torch
from kernel_numerics import needs_triton

from hybridscope.engine.config import PRESETS, EngineConfig
from hybridscope.engine.model import Batch, HybridModel, build_model


def full_logits(model, seq: torch.Tensor) -> torch.Tensor:
    """All-position logits of one sequence in a single prefill with a fresh cache."""
    return model(seq, Batch.packed([0], [0], [seq.numel()], "cpu"), model.new_cache(), all_logits=True)


@pytest.mark.parametrize("overrides", [{}, {"rope": True, "pattern": "P-*M"}, {"chunk_size": 8}])
def test_cached_decode_equals_full_forward(overrides):
    model = build_model(EngineConfig.from_preset("tiny", **overrides))
    L, G = 21, 5  # 21 > chunk sizes: the prefill crosses chunk boundaries
    seqs = torch.randint(0, 256, (3, L + G), generator=torch.Generator().manual_seed(0))
    ref = [full_logits(model, s) for s in seqs]
    cache = model.new_cache()
    # prefill three sequences in slots 2, 0, 5 (packed, ragged: the third is shorter by 4)
    lens = [L, L, L - 4]
    ids = torch.cat([seqs[i, :n] for i, n in enumerate(lens)])
    first = model(ids, Batch.packed([2, 0, 5], [0, 0, 0], lens, "cpu"), cache)
    for i, n in enumerate(lens):
        torch.testing.assert_close(first[i], ref[i][n - 1], rtol=1e-4, atol=1e-5)
    # third sequence catches up with a 4-token chunk while the others decode one token: a mixed step
    mixed = model(
        torch.cat([seqs[0, L : L + 1], seqs[1, L : L + 1], seqs[2, L - 4 : L]]),
        Batch.packed([2, 0, 5], [L, L, L - 4], [1, 1, 4], "cpu"),
        cache,
    )
    torch.testing.assert_close(mixed[0], ref[0][L], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[2], ref[2][L - 1], rtol=1e-4, atol=1e-5)
    # dense decode on slots 0..5 (slots 1, 3, 4 idle padding): sequences 1 (slot 0) and 2 (slot 5)
    for g in range(1, G):
        pos = torch.zeros(6, dtype=torch.long)
        pos[0], pos[5] = L + g, L + g - 1
        toks = torch.zeros(6, dtype=torch.long)
        toks[0], toks[5] = seqs[1, L + g], seqs[2, L + g - 1]
        out = model(toks, Batch.dense_decode(pos, 64), cache)
        torch.testing.assert_close(out[0], ref[1][L + g], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[5], ref[2][L + g - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_with_the_named_module_tree(name):
    cfg = EngineConfig.from_preset(name)
    with torch.device("meta"):  # the big presets: structure only, no memory
        model = HybridModel(cfg, device="meta")
    kinds = {"M": "Mamba2Mixer", "*": "Attention", "P": "ParallelHybridMixer", "E": "MoE", "-": "DenseMLP"}
    for ch, block in zip(cfg.pattern, model.layers):
        sub = block.mixer if ch in "M*P" else (block.moe if ch == "E" else block.mlp)
        assert type(sub).__name__ == kinds[ch]
        assert type(block.norm).__name__ == "RMSNorm"
    assert [type(m).__name__ for m in (model.embed, model.norm_f, model.lm_head)] == [
        "Embedding",
        "RMSNorm",
        "LMHead",
    ]


def test_nemotron_mini_keeps_the_real_pattern():
    cfg = EngineConfig.from_preset("nemotron3-nano-mini")
    assert (cfg.count("M"), cfg.count("E"), cfg.count("*"), len(cfg.pattern)) == (23, 23, 6, 52)


def test_seeded_init_is_deterministic_and_seed_dependent():
    a = build_model(EngineConfig.from_preset("tiny", seed=3)).state_dict()
    b = build_model(EngineConfig.from_preset("tiny", seed=3)).state_dict()
    c = build_model(EngineConfig.from_preset("tiny", seed=4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.mixer.in_proj.weight"], c["layers.0.mixer.in_proj.weight"])


@pytest.mark.parametrize(
    "bad",
    [
        {"pattern": "MX"},
        {"n_kv_heads": 3},
        {"router": "topk"},
        {"top_k": 9},
        {"skew_experts": (8,)},
        {"dtype": "int8"},
    ],
)
def test_bad_config_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="EngineConfig"):
        EngineConfig.from_preset("tiny", **bad)


def test_memory_breakdown_kv_grows_state_flat():
    model = build_model(EngineConfig.from_preset("tiny"))
    cache = model.new_cache(max_batch=4, max_seq_len=128)
    small, large = cache.memory_breakdown([10, 10]), cache.memory_breakdown([100, 100])
    # tiny "ME*EP-ME": KV in 2 layers (*, P), SSM state in 3 (M, P, M); fp32
    assert cache.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head_dim x 4 B
    assert large["kv_cache_used"] - small["kv_cache_used"] == 180 * cache.kv_bytes_per_token
    assert (
        large["ssm_state_used"] == small["ssm_state_used"] == 2 * 3 * 4 * 16 * 16 * 4
    )  # requests x layers x H x P x N
    assert small["kv_cache_allocated"] == 2 * 2 * 4 * 2 * 128 * 16 * 4


@needs_triton
def test_compiled_decode_traces_whole_blocks_and_matches_eager():
    """Dynamo traces every block kind without a graph break, one graph per kind (not per layer), and the
    traced decode equals eager (backend='eager': same graphs, no code generation on CPU)."""
    import torch._dynamo

    model = build_model(
        EngineConfig.from_preset("tiny", dtype="bfloat16")
    )  # the grouped GEMM's fake impl wants bf16
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))

    def run():
        cache = model.new_cache()
        outs = [model(ids[:, :10].reshape(-1), Batch.packed([0, 1], [0, 0], [10, 10], "cpu"), cache)]
        for t in (10, 11):
            outs.append(model(ids[:, t], Batch.dense_decode(torch.tensor([t, t]), 32), cache))
        return outs

    ref = run()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model.compile_decode(backend="eager")
    for a, b in zip(ref, run()):
        assert torch.equal(a, b)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == len(set(model.cfg.pattern))
    torch._dynamo.reset()
