"""Capture the `with_stack` Kineto trace of a small HF NemotronH-like hybrid model (test fixture).

The model is the NemotronH-like layout of ../shared/traces/make_hf_models.py, shrunk so the gzip
trace stays under 5 MB: pattern "MEM*E" by default (M = Mamba2 mixer, E = MoE, * = attention),
random init, bf16, no download. `generate` runs once to warm up, then once under
`torch.profiler.profile(activities=[CPU, CUDA], with_stack=True, record_shapes=False)`.
Without mamba_ssm the Mamba2 mixer runs its pure-PyTorch path: generic kernel names only, so
attribution must come from the `nn.Module: NemotronHMamba2Mixer_N` frames.

    python scripts/make_hf_trace.py --out tests/fixtures/nemotronh_with_stack.pt.trace.json.gz

Prints one JSON line with the versions, device and layout (for the fixture's README).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shutil
import sys
import tempfile


def build(pattern: str, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, NemotronHConfig

    cfg = NemotronHConfig(
        vocab_size=4096, hidden_size=512, hybrid_override_pattern=pattern, num_hidden_layers=len(pattern),
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, mamba_num_heads=16, mamba_head_dim=64,
        ssm_state_size=64, n_groups=4, chunk_size=64, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=256, moe_shared_expert_intermediate_size=512, n_group=1, topk_group=1,
        intermediate_size=1024, max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    return model, cfg


def generate(model, device: str, batch: int, prompt: int, new: int):
    import torch

    ids = torch.randint(10, 4000, (batch, prompt), device=device, generator=None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="trace path (.json.gz)")
    ap.add_argument("--pattern", default="MEM*E")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, cfg = build(args.pattern, device, dtype)
    generate(model, device, args.batch, args.prompt, args.new_tokens)  # warm-up: lazy init, autotune
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, with_stack=True, record_shapes=False) as prof:
        generate(model, device, args.batch, args.prompt, args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(args.out, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
    info = {
        "out": args.out, "bytes": os.path.getsize(args.out), "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0], "date": datetime.date.today().isoformat(),
        "pattern": args.pattern, "layer_types": list(getattr(cfg, "layers_block_type", [])),
        "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new_tokens,
    }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
