"""A small multi-process server for tests/test_live_family.py, run under `hybridscope trace`.

The parent builds no model: it starts two engine workers with torch.multiprocessing (spawn) and one
worker with `subprocess` that serves a tiny HF NemotronH (random weights from a config, no
download), then a Python child that never imports torch. Each worker serves a few requests and
prints what it generated. Nothing here knows about hybridscope: the trace arms itself in each child.

    python trace_server.py [NEW_TOKENS]          the server
    python trace_server.py --hf NEW_TOKENS       the HF worker (started by the server)
"""

import subprocess
import sys


def engine_worker(i: int, new_tokens: int) -> None:
    import torch

    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    torch.set_num_threads(1)
    model = build_model(EngineConfig.from_preset("tiny"))
    reqs = [Request(rid=k, prompt=[1 + k + i, 2, 3, 4], max_new_tokens=new_tokens) for k in range(2)]
    done = Engine(model, cuda_graphs=False).run(reqs)
    sys.stdout.write(f"engine worker {i}: {sorted(len(r.tokens) for r in done)}\n")  # one write: workers share the pipe
    sys.stdout.flush()


def hf_worker(new_tokens: int) -> None:
    import torch
    import transformers

    torch.set_num_threads(1)
    cfg = transformers.NemotronHConfig(
        vocab_size=256, hidden_size=64, hybrid_override_pattern="ME*E", num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=1,
        chunk_size=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32, n_group=1, topk_group=1, intermediate_size=64,
        max_position_embeddings=4096)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(10, 250, (2, 8), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    print("hf worker:", out.shape[1] - ids.shape[1], flush=True)


def main(new_tokens: int) -> None:
    import torch.multiprocessing as mp

    hf = subprocess.Popen([sys.executable, __file__, "--hf", str(new_tokens)])
    mp.start_processes(engine_worker, args=(new_tokens,), nprocs=2, start_method="spawn", join=True)
    subprocess.run([sys.executable, "-c", "print('no torch here')"], check=True)
    if hf.wait() != 0:
        sys.exit("the hf worker failed")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hf"]:
        hf_worker(int(sys.argv[2]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
