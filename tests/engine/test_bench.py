"""The serving bench CLI on CPU: prints what a serving engine shows, writes consistent JSON."""

from __future__ import annotations

import json

from hybridscope.engine.bench import main


def test_bench_tiny_cpu_reports_throughput_latency_and_memory_split(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["--preset", "tiny", "--requests", "5", "--prompt-len", "12", "--gen-len", "4", "--rate", "50"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("output tok/s", "TTFT", "ITL", "KV cache", "SSM state", f"Wrote {out}"):
        assert word in text
    res = json.loads(out.read_text())
    assert res["output_tokens"] == 20 and res["requests"] == 5
    assert res["ttft_p50"] > 0 and res["itl_p50"] > 0 and res["tokens_per_s"] > 0
    mem = res["memory"]
    # KV used = cached tokens at the peak step x bytes per token; SSM state is per live request
    assert mem["kv_cache_used"] == res["peak_cached_tokens"] * 2 * 2 * 2 * 16 * 4
    assert mem["ssm_state_used"] == res["peak_live_requests"] * 3 * 4 * 16 * 16 * 4


def test_bench_bad_option_is_one_line_and_exit_1(capsys):
    assert main(["--preset", "tiny", "--skew", "1", "--skew-experts", "99"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: EngineConfig tiny: skew_experts out of range") and "\n" not in err
