"""Continuous batching: a request queue with arrival times, mixed prefill+decode steps, CUDA graphs.

Each ``Engine.step``:
1. admits arrived requests into free cache slots (lowest slot first, at most ``max_prefill_tokens``
   prompt tokens per step, at least one request when a slot is free);
2. runs one forward over every running request: a *packed* step when some request is in prefill
   (prefills and the other requests' decode tokens mixed in one batch), else a *dense decode* over
   slots ``0..B-1`` (B = the smallest bucket covering the highest busy slot; idle slots in that range
   compute padding rows that nobody reads), replayed from a CUDA graph per (B, KV window) on GPU;
3. samples on device (greedy, or Gumbel-max with a temperature: no host sync), feeds the tokens back
   as the next step's inputs on device, then copies them to the host once, as a server streams
   them. That copy's completion is each token's timestamp: TTFT = first token - arrival, ITL =
   gaps between a request's tokens; each step records its start, end and token counts.
Finished requests free their slot at once; a new request resets the slot's recurrent state.

Forward hooks do not run inside a CUDA graph replay; a profiler that wants layer times inside the
graphed decode has to see the capture (hybridscope's live capture wraps ``CUDAGraph`` for that).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import Batch, HybridModel

log = logging.getLogger("hybridscope.engine")


@dataclass
class Request:
    rid: int
    prompt: list[int]
    max_new_tokens: int
    arrival: float = 0.0
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.tokens) >= self.max_new_tokens

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def next_pos(self) -> int:
        """Position of the token this request feeds next (its last sampled token)."""
        return len(self.prompt) + len(self.tokens) - 1


@dataclass
class StepRecord:
    index: int
    start: float
    end: float
    kind: str  # 'prefill' (prefills only), 'mixed' (prefill + decode), 'decode'
    n_seqs: int
    prefill_tokens: int
    decode_tokens: int
    graph: bool
    bucket: int  # dense decode: rows computed (B); packed: tokens computed
    cached_tokens: list[int] = field(default_factory=list)  # tokens in cache per live request, at the end

    @property
    def latency(self) -> float:
        return self.end - self.start


def _bucket(n: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= n)


def _expert_parallel(model: HybridModel) -> tuple[bool, object]:
    """(whether some MoE dispatches across ranks, its process group; None = the default group)."""
    groups = [
        m.dispatcher.group
        for m in model.modules()
        if getattr(m, "dispatcher", None) and m.dispatcher.needs_host_sync
    ]
    return bool(groups), (groups[0] if groups else None)


def _apply_compile(model: HybridModel, mode: bool | str | None) -> None:
    if mode not in (False, None, True, "ops", "decode"):
        raise ValueError(f"compile must be False, 'ops' or 'decode', got {mode!r}")
    if mode in (True, "ops"):
        model.ops.compile()  # element-wise stretches fused, everything else eager
    elif mode == "decode":
        model.compile_decode()  # whole block sublayers compiled for the dense decode path


class Engine:
    """Serve requests on one model with static caches. ``clock``/``sleep`` are injectable (tests)."""

    def __init__(
        self,
        model: HybridModel,
        *,
        max_batch: int | None = None,
        max_seq_len: int | None = None,
        cuda_graphs: bool | None = None,
        compile: bool | str = False,
        max_prefill_tokens: int = 4096,
        temperature: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.model, cfg = model, model.cfg
        self.device = model.embed.weight.device
        self.ep, self.ep_group = _expert_parallel(model)
        ep = self.ep
        # under EP a rank with nothing to do still joins every step's all-to-alls: it runs a one-token
        # forward in a scratch slot past the request slots
        max_batch = max_batch or cfg.max_batch
        self.cache = model.new_cache(max_batch + ep, max_seq_len)
        self.max_batch, self.max_seq_len = max_batch, self.cache.max_seq_len
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and not ep
        if cuda_graphs and (self.device.type != "cuda" or ep):
            raise ValueError("cuda_graphs needs a CUDA model without expert parallelism")
        self.cuda_graphs = cuda_graphs
        _apply_compile(model, compile)
        log.info(
            "engine: %s on %s, cuda_graphs=%s, slots=%d", cfg.name, self.device, cuda_graphs, self.max_batch
        )
        self.max_prefill_tokens, self.temperature = max_prefill_tokens, temperature
        self.clock, self.sleep = clock, sleep
        self.t0 = clock()  # times are seconds since t0 (``run`` restarts it); arrivals are on that scale
        self.batch_buckets = tuple(sorted({min(2**i, self.max_batch) for i in range(12)}))
        self.kv_buckets = tuple(sorted({min(256 * 2**i, self.max_seq_len) for i in range(16)}))
        self.last_tok = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
        self.pos_buf = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._routers = [m for m in model.modules() if type(m).__name__ == "Router"]
        self.pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # slot -> request
        self.finished: list[Request] = []
        self.steps: list[StepRecord] = []
        self._peers_busy = False
        self.logits_hook: Callable[[list[Request], torch.Tensor, bool], None] | None = None

    # ---- queue -------------------------------------------------------------------------------
    def submit(self, requests: list[Request]) -> None:
        for r in requests:
            if not r.prompt or r.max_new_tokens < 1:
                raise ValueError(f"request {r.rid}: empty prompt or max_new_tokens < 1")
            if len(r.prompt) + r.max_new_tokens > self.max_seq_len:
                raise ValueError(
                    f"request {r.rid}: prompt + generation exceeds max_seq_len={self.max_seq_len}"
                )
        self.waiting.extend(sorted(requests, key=lambda r: r.arrival))

    def run(self, requests: list[Request]) -> list[Request]:
        """Serve ``requests`` to completion (waiting for arrivals); return them in finishing order."""
        if not self.steps:
            self.t0 = self.clock()
        self.submit(requests)
        while self._any_rank(bool(self.waiting or self.running)):
            if self.step() is None and not self._peers_busy:
                self.sleep(max(0.0, self.waiting[0].arrival - self.now()) if self.waiting else 1e-3)
        return self.finished

    def _admit(self, now: float) -> list[Request]:
        admitted, budget = [], self.max_prefill_tokens
        free = sorted(set(range(self.max_batch)) - set(self.running))
        while self.waiting and free and self.waiting[0].arrival <= now:
            r = self.waiting[0]
            if admitted and len(r.prompt) > budget:
                break
            self.waiting.popleft()
            r.slot = free.pop(0)
            budget -= len(r.prompt)
            self.cache.reset(r.slot)
            self.running[r.slot] = r
            admitted.append(r)
        return admitted

    def _any_rank(self, flag: bool) -> bool:
        """flag OR-ed over the expert-parallel ranks (just flag without EP)."""
        if not self.ep:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ep_group)
        return bool(t.item())

    def now(self) -> float:
        return self.clock() - self.t0

    # ---- one step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> StepRecord | None:
        """Run one engine step; None when nothing is running and nothing has arrived yet."""
        start = self.now()
        prefills = self._admit(start)
        self._peers_busy = self._any_rank(bool(self.running)) and not self.running
        if not self.running:
            if self._peers_busy:  # expert parallel: keep the collectives of every layer matched
                scratch = Batch.packed([self.max_batch], [0], [1], self.device)
                self.model(self.last_tok[:1], scratch, self.cache)
            return None
        decodes = [r for r in self.running.values() if r.tokens]
        if prefills:
            reqs, logits, graph = decodes + prefills, self._packed_forward(decodes, prefills), False
            bucket = sum(len(r.prompt) for r in prefills) + len(decodes)
        else:
            reqs = decodes
            logits, graph, bucket = self._dense_forward(decodes)
        self._sample_and_stream(reqs, logits, dense=not prefills)
        end = self.now()
        kind = "decode" if not prefills else ("mixed" if decodes else "prefill")
        cached = [len(r.prompt) + len(r.tokens) - 1 for r in self.running.values()]  # K/V written so far
        rec = StepRecord(
            len(self.steps),
            start,
            end,
            kind,
            len(reqs),
            sum(len(r.prompt) for r in prefills),
            len(decodes),
            graph,
            bucket,
            cached,
        )
        self.steps.append(rec)
        for r in reqs:
            r.token_times.append(end)
            if r.done:
                del self.running[r.slot]
                self.finished.append(r)
        return rec

    def _packed_forward(self, decodes: list[Request], prefills: list[Request]) -> torch.Tensor:
        reqs = decodes + prefills
        batch = Batch.packed(
            [r.slot for r in reqs],
            [r.next_pos for r in decodes] + [0] * len(prefills),
            [1] * len(decodes) + [len(r.prompt) for r in prefills],
            self.device,
        )
        prompt_ids = torch.tensor([t for r in prefills for t in r.prompt], device=self.device)
        dec_ids = self.last_tok[torch.tensor([r.slot for r in decodes], dtype=torch.long, device=self.device)]
        return self.model(torch.cat([dec_ids, prompt_ids]), batch, self.cache)  # [S, V]

    def _dense_forward(self, decodes: list[Request]) -> tuple[torch.Tensor, bool, int]:
        B = _bucket(max(r.slot for r in decodes) + 1, self.batch_buckets)
        pos = [0] * B
        for r in decodes:
            pos[r.slot] = r.next_pos
        kv_len = _bucket(max(pos) + 1, self.kv_buckets)
        self.pos_buf[:B].copy_(torch.tensor(pos), non_blocking=True)
        if not self.cuda_graphs:
            return (
                self.model(self.last_tok[:B], Batch.dense_decode(self.pos_buf[:B], kv_len), self.cache),
                False,
                B,
            )
        graph, out = self._graph(B, kv_len, tuple(r.skewed for r in self._routers))
        graph.replay()
        return out, True, B

    def _graph(self, B: int, kv_len: int, variant: tuple) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture (once per variant: which routers apply a skew) the dense decode of slots 0..B-1 over a
        KV window of kv_len."""
        key = (B, kv_len, variant)
        if key not in self.graphs:
            batch = Batch.dense_decode(self.pos_buf[:B], kv_len)
            saved = {
                i: (self.cache.conv[i][:B].clone(), self.cache.ssm[i][:B].clone()) for i in self.cache.ssm
            }
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up (lazy inits, autotuning) off the capture
                self.model(self.last_tok[:B], batch, self.cache)
            torch.cuda.current_stream().wait_stream(stream)
            for i, (conv, ssm) in saved.items():  # the warm-up advanced the recurrent states: undo
                self.cache.conv[i][:B].copy_(conv)
                self.cache.ssm[i][:B].copy_(ssm)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model(self.last_tok[:B], batch, self.cache)
            self.graphs[key] = (graph, out)
        return self.graphs[key]

    def _sample_and_stream(self, reqs: list[Request], logits: torch.Tensor, dense: bool) -> None:
        """logits: [B, V] by slot (dense) or [S, V] in ``reqs`` order (packed)."""
        if self.logits_hook is not None:
            self.logits_hook(reqs, logits, dense)
        if self.temperature > 0:
            u = torch.rand(logits.shape, device=logits.device, generator=self.gen).clamp_(1e-20, 1.0)
            nxt = torch.argmax(logits / self.temperature - torch.log(-torch.log(u)), dim=-1)
        else:
            nxt = torch.argmax(logits, dim=-1)
        if dense:
            self.last_tok[: nxt.shape[0]].copy_(nxt)
            host = nxt.tolist()
            toks = [host[r.slot] for r in reqs]
        else:
            self.last_tok[torch.tensor([r.slot for r in reqs], device=self.device)] = nxt
            toks = nxt.tolist()
        for r, t in zip(reqs, toks):
            r.tokens.append(t)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(requests: list[Request], steps: list[StepRecord]) -> dict[str, float]:
    """What a serving engine reports: output tokens/s over the served window (first arrival to last
    token), TTFT and ITL p50/p99 over requests and gaps, step latency p50/p99. Times in seconds."""
    ttft = [r.ttft for r in requests if r.token_times]
    itl = [g for r in requests for g in r.itl]
    lat = [s.latency for s in steps]
    n_tok = sum(len(r.tokens) for r in requests)
    window = max(r.token_times[-1] for r in requests) - min(r.arrival for r in requests) if requests else 0.0
    return {
        "requests": len(requests),
        "output_tokens": n_tok,
        "tokens_per_s": n_tok / window if window > 0 else float("nan"),
        "ttft_p50": _pct(ttft, 50),
        "ttft_p99": _pct(ttft, 99),
        "itl_p50": _pct(itl, 50),
        "itl_p99": _pct(itl, 99),
        "step_p50": _pct(lat, 50),
        "step_p99": _pct(lat, 99),
        "steps": len(steps),
        "decode_steps": sum(s.kind == "decode" for s in steps),
        "graph_steps": sum(s.graph for s in steps),
    }
