-- hybridscope store, schema version 1. Documented column by column in docs/schema.md.
-- Time: integer nanoseconds on one clock per run (ts_ns, *_ns); durations integer ns, with a
-- duration_us double beside them for people's SQL.

CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR
);

-- One row per logical run: an imported trace set (one file per rank) or a capture session.
CREATE TABLE IF NOT EXISTS runs (
    run_id           INTEGER PRIMARY KEY,
    label            VARCHAR,            -- user-facing name (file stem or capture label)
    source           VARCHAR NOT NULL,   -- 'kineto' | 'nsys' | 'ingero' | 'capture'
    host             VARCHAR,            -- host of rank 0 (per-rank hosts in run_ranks)
    rank             INTEGER,            -- the rank when the run holds one rank, else NULL
    world_size       INTEGER,            -- from distributedInfo / torch.distributed, else 1
    device_name      VARCHAR,            -- e.g. 'NVIDIA H200'
    versions         JSON,               -- {"torch": .., "cuda_runtime": .., "cupti": .., "nccl": ..}
    distributed_info JSON,               -- Kineto distributedInfo as written, or capture's
    t_start_ns       BIGINT,             -- window covered by the run's events (min ts)
    t_end_ns         BIGINT,             -- (max ts + duration)
    created_at       TIMESTAMP DEFAULT current_timestamp,
    notes            JSON                -- what the import skipped or could not read, capture faults
);

-- One row per rank (per imported file) of a run.
CREATE TABLE IF NOT EXISTS run_ranks (
    run_id           INTEGER NOT NULL,
    rank             INTEGER NOT NULL,
    path             VARCHAR,            -- the file imported, or the captured script
    content_hash     VARCHAR,            -- sha256 of the file's bytes: re-imports are detected by it
    host             VARCHAR,
    device_name      VARCHAR,
    versions         JSON,
    distributed_info JSON,
    base_time_ns     BIGINT,             -- Kineto baseTimeNanoseconds (epoch offset) when present
    clock_offset_ns  BIGINT DEFAULT 0,   -- added to this rank's ts_ns to align ranks (merge)
    n_events         BIGINT,
    t_start_ns       BIGINT,
    t_end_ns         BIGINT,
    PRIMARY KEY (run_id, rank)
);

-- Every timed thing: GPU kernels, memcpy, memset, runtime/driver calls, syncs, CPU ops,
-- annotations, captured layer timings. `source` says where it was recorded, `kind` what it is.
--   source: 'cuda' (GPU timeline: kernels, memcpy, memset, GPU annotations - AMD too),
--           'cuda_api' (host runtime/driver calls, syncs), 'cpu' (CPU ops, python frames),
--           'annotation' (record_function / NVTX / user ranges), 'host_api' (Ingero uprobes),
--           'layer' (capture's per-layer CUDA-event timings)
--   kind:   'kernel' | 'memcpy' | 'memset' | 'sync' | 'runtime' | 'driver' | 'cpu_op'
--           | 'python' | 'user_annotation' | 'gpu_annotation' | 'layer' | 'other'
CREATE TABLE IF NOT EXISTS events (
    run_id       INTEGER NOT NULL,
    rank         INTEGER NOT NULL DEFAULT 0,
    event_id     BIGINT NOT NULL,        -- unique within (run_id, rank)
    source       VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    name         VARCHAR NOT NULL,
    device       INTEGER,                -- GPU index for GPU events
    stream       BIGINT,                 -- CUDA stream / HIP queue
    pid          BIGINT,
    tid          BIGINT,
    ts_ns        BIGINT NOT NULL,
    duration_ns  BIGINT NOT NULL,
    duration_us  DOUBLE NOT NULL,        -- duration_ns / 1000
    correlation  BIGINT,                 -- launch <-> kernel link (CUPTI correlation id)
    external_id  BIGINT,                 -- Kineto "External id": op <-> launch link
    graph_id     BIGINT,                 -- CUDA graph (node) id, when replayed from a graph
    args         JSON,                   -- the few source fields worth keeping (grid, block, comm sizes)
    -- attribution, filled by hybridscope.attribute
    layer_type   VARCHAR,                -- closed vocabulary, see attribute/vocab.py
    layer_index  INTEGER,
    module       VARCHAR,                -- module path or class, e.g. 'backbone.layers.3.mixer'
    scope_id     BIGINT,                 -- innermost scope that attributed it
    attr_method  VARCHAR,                -- 'scope' | 'graph' | 'name' | 'none'
    step         INTEGER,                -- engine step / iteration, when known
    phase        VARCHAR                 -- 'prefill' | 'decode' | 'mixed', when known
);

-- Ranges that give kernels their meaning: record_function/NVTX annotations, nn.Module frames
-- (with_stack traces), capture's module hooks, step marks.
CREATE TABLE IF NOT EXISTS scopes (
    run_id       INTEGER NOT NULL,
    rank         INTEGER NOT NULL DEFAULT 0,
    scope_id     BIGINT NOT NULL,        -- unique within (run_id, rank)
    kind         VARCHAR NOT NULL,       -- 'annotation' | 'module' | 'step' | 'nvtx' | 'layer'
    name         VARCHAR NOT NULL,       -- as recorded
    pid          BIGINT,
    tid          BIGINT,
    ts_ns        BIGINT NOT NULL,
    end_ns       BIGINT NOT NULL,
    depth        INTEGER,                -- nesting depth on its thread, 0 = outermost
    parent_id    BIGINT,
    module_class VARCHAR,
    module_path  VARCHAR,
    layer_index  INTEGER,
    layer_type   VARCHAR,
    step         INTEGER,
    phase        VARCHAR
);

-- Engine steps (capture, or step annotations of an import).
CREATE TABLE IF NOT EXISTS steps (
    run_id        INTEGER NOT NULL,
    rank          INTEGER NOT NULL DEFAULT 0,
    step          INTEGER NOT NULL,
    ts_ns         BIGINT NOT NULL,
    duration_ns   BIGINT NOT NULL,
    phase         VARCHAR,               -- 'prefill' | 'decode' | 'mixed'
    n_tokens      INTEGER,
    n_requests    INTEGER,
    sampled       BOOLEAN                -- capture: layer times/scopes/routing recorded for this step; NULL: import
);
ALTER TABLE steps ADD COLUMN IF NOT EXISTS sampled BOOLEAN;  -- stores created before the column
-- capture: the step was a CUDA-graph replay (live.graphs); NULL: import or older store
ALTER TABLE steps ADD COLUMN IF NOT EXISTS graph_replay BOOLEAN;

-- MoE routing: tokens per expert, per MoE layer and step.
CREATE TABLE IF NOT EXISTS routing (
    run_id       INTEGER NOT NULL,
    rank         INTEGER NOT NULL DEFAULT 0,
    step         INTEGER NOT NULL,
    layer_index  INTEGER NOT NULL,
    expert       INTEGER NOT NULL,
    tokens       BIGINT NOT NULL
);

-- What a dashboard sampled for the same window (NVML, CPU): one row per metric reading.
CREATE TABLE IF NOT EXISTS samples (
    run_id  INTEGER NOT NULL,
    rank    INTEGER NOT NULL DEFAULT 0,
    device  INTEGER,
    ts_ns   BIGINT NOT NULL,
    metric  VARCHAR NOT NULL,            -- 'gpu_util_pct' | 'mem_util_pct' | 'sm_clock_mhz' | ...
    value   DOUBLE
);

-- Per-request serving metrics, when the workload reports them (the engine does).
CREATE TABLE IF NOT EXISTS requests (
    run_id          INTEGER NOT NULL,
    request_id      BIGINT NOT NULL,
    arrival_ns      BIGINT,
    first_token_ns  BIGINT,
    finish_ns       BIGINT,
    prompt_tokens   INTEGER,
    output_tokens   INTEGER
);

-- Baselines (hybridscope baseline save): per group, the durations themselves (up to 200k,
-- a seeded uniform subsample beyond), so `check` tests distributions, not summaries.
CREATE TABLE IF NOT EXISTS baselines (
    name             VARCHAR PRIMARY KEY,
    run_id           INTEGER,            -- the run it was taken from (in the database it was saved in)
    rank             INTEGER,            -- NULL: all ranks pooled
    run_label        VARCHAR,
    created_at       TIMESTAMP DEFAULT current_timestamp,
    throughput       DOUBLE,
    throughput_unit  VARCHAR             -- 'tokens/s' | 'steps/s' | NULL
);
-- what the baseline measured, so that check compares like with like; the runs it pools
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS run_ids INTEGER[];   -- every run pooled (run_id is the first)
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS measure VARCHAR;     -- 'kernels' | 'layers' | 'host_api'
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS device VARCHAR;      -- runs.device_name
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS model VARCHAR;       -- layer structure (analyze/compare.py)
ALTER TABLE baselines ADD COLUMN IF NOT EXISTS warmup JSON;         -- what the warm-up left out, per run

CREATE TABLE IF NOT EXISTS baseline_groups (
    name       VARCHAR NOT NULL,         -- baselines.name
    group_by   VARCHAR NOT NULL,         -- 'layer_type' | 'layer' | 'kernel'
    group_key  VARCHAR NOT NULL,
    n          BIGINT NOT NULL,          -- events in the run (samples may hold fewer)
    total_ns   BIGINT NOT NULL,
    samples    BIGINT[] NOT NULL         -- sorted durations, ns
);
ALTER TABLE baseline_groups ADD COLUMN IF NOT EXISTS clusters BIGINT[];  -- step of each sample (rank * 2^32 + step; -1 none)
ALTER TABLE baseline_groups ADD COLUMN IF NOT EXISTS parts INTEGER[];    -- which of run_ids each sample came from (0-based)
