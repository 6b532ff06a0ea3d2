"""Small models for the capture tests: the engine's 'tiny' preset, a tiny HF NemotronH, a toy MoE
whose router returns hand-written expert ids, and helpers to read a captured run back."""

from __future__ import annotations

import functools

import duckdb
import pytest
import torch
from torch import nn

ENGINE_PATTERN = "ME*EP-ME"  # the engine's tiny preset: M mamba, E moe, * attention, P parallel, - mlp
HF_PATTERN = "ME*E"


def engine_tiny(device: str = "cpu"):
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model

    return build_model(EngineConfig.from_preset("tiny"), device=device)


def run_engine(model, n_requests: int = 3, prompt: int = 6, new_tokens: int = 3) -> list[list[int]]:
    """Serve a few requests to completion; the generated tokens per request id."""
    from hybridscope.engine.scheduler import Engine, Request

    engine = Engine(model, cuda_graphs=False)
    reqs = [Request(rid=i, prompt=list(range(1 + i, 1 + i + prompt)), max_new_tokens=new_tokens)
            for i in range(n_requests)]
    done = engine.run(reqs)
    return [r.tokens for r in sorted(done, key=lambda r: r.rid)]


@functools.lru_cache(maxsize=8)
def reference_tokens(n_requests: int = 3, prompt: int = 6, new_tokens: int = 3) -> list[list[int]]:
    """What an uncaptured tiny engine generates (deterministic: seeded init, greedy sampling)."""
    return run_engine(engine_tiny(), n_requests, prompt, new_tokens)


def captured_engine_run(tmp_path_factory, mode: str):
    """The tiny engine served under capture (every step) beside an uncaptured reference run:
    (db, reference tokens, captured tokens, capture summary)."""
    import hybridscope

    db = tmp_path_factory.mktemp(mode) / "run.duckdb"
    reference = reference_tokens()
    model = engine_tiny()
    with hybridscope.capture(db=db, model=model, mode=mode, sample_every=1, quiet=True) as cap:
        out = run_engine(model)
    return db, reference, out, cap.summary


def hf_nemotron_h(pattern: str = HF_PATTERN, hidden: int = 64, experts: int = 4, dtype=torch.float32,
                  **overrides):
    """A random-init NemotronH (transformers), scaled down from shared/traces/make_hf_models.py."""
    transformers = pytest.importorskip("transformers")
    kw = {
        "vocab_size": 256, "hidden_size": hidden, "hybrid_override_pattern": pattern, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": hidden // 4, "mamba_num_heads": 4, "mamba_head_dim": hidden // 4,
        "ssm_state_size": 16, "n_groups": 1, "chunk_size": 16, "n_routed_experts": experts, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32, "n_group": 1, "topk_group": 1,
        "intermediate_size": 64, "max_position_embeddings": 4096}
    cfg = transformers.NemotronHConfig(**{**kw, **overrides})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype).eval()


class FixedRouter(nn.Module):
    """A router that returns the expert ids it was given, as (weights, ids) like HF routers do."""

    def __init__(self, ids: torch.Tensor, num_experts: int):
        super().__init__()
        self.ids, self.num_experts = ids, num_experts

    def forward(self, x):
        return torch.ones(self.ids.shape), self.ids


class ToyMoE(nn.Module):
    def __init__(self, ids, num_experts):
        super().__init__()
        self.router = FixedRouter(ids, num_experts)

    def forward(self, x):
        _, ids = self.router(x)
        return x * (1 + ids.sum() * 0)


class ToyBlock(nn.Module):
    def __init__(self, ids, num_experts):
        super().__init__()
        self.moe = ToyMoE(ids, num_experts)

    def forward(self, x):
        return x + self.moe(x)


class ToyModel(nn.Module):
    """layers.0 is an MoE block whose router picks `ids` each call."""

    def __init__(self, ids, num_experts):
        super().__init__()
        self.layers = nn.ModuleList([ToyBlock(ids, num_experts)])

    def forward(self, x):
        return self.layers[0](x)


def latest_run(db) -> tuple[duckdb.DuckDBPyConnection, int]:
    con = duckdb.connect(str(db), read_only=True)
    return con, con.execute("SELECT max(run_id) FROM runs").fetchall()[0][0]


def rows(con, sql: str, params=None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()
