-- The status index file (docs/status.md). `tasks` holds one row per task: its status and the
-- rank of the event that decided it (docs/wire-format.md §11.6: attempt, delivery count,
-- phase, then stream position: epoch, offset, sequence number). `counts` holds the tasks per
-- queue and state, changed in the same transactions. `progress` is where the index is in the
-- stream (the last batch applied and what identifies it), `gaps` the events it may miss.
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    delivery_count INTEGER,
    worker TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms INTEGER,
    retry_at_ms INTEGER,
    error_kind TEXT,
    error_reason TEXT,
    result TEXT,
    result_error TEXT,
    rank_attempt INTEGER NOT NULL,
    rank_delivery_count INTEGER NOT NULL,
    rank_phase INTEGER NOT NULL,
    position_epoch INTEGER NOT NULL,
    position_offset INTEGER NOT NULL,
    position_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks (updated_at_ms, id);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, updated_at_ms, id);
CREATE INDEX IF NOT EXISTS tasks_by_task ON tasks (task, updated_at_ms, id);
CREATE INDEX IF NOT EXISTS tasks_by_queue ON tasks (queue, updated_at_ms, id);
CREATE INDEX IF NOT EXISTS tasks_by_end ON tasks (ended_at_ms) WHERE ended_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    stream TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    stream_offset INTEGER,
    batch_source TEXT,
    batch_first_seq INTEGER,
    last_event_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    since_ms INTEGER,
    detected_at_ms INTEGER NOT NULL,
    stored_offset INTEGER NOT NULL,
    resumed_offset INTEGER
);
-- `workers` holds one row per worker heard from (its heartbeats and farewell, §11.7): the
-- last heartbeat's fields, where it was in the stream, when the index received it (by the
-- index's clock) and whether the worker is alive or gone. A task whose deciding event is a
-- `started` of a gone worker has the state `lost` (docs/status.md).
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    queues TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    prefetch INTEGER NOT NULL,
    running TEXT NOT NULL,
    counts TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    interval_ms INTEGER NOT NULL,
    heard_at_ms INTEGER NOT NULL,
    position_epoch INTEGER NOT NULL,
    position_offset INTEGER NOT NULL,
    status TEXT NOT NULL,
    gone_reason TEXT,
    gone_at_ms INTEGER
);
-- Only the tasks a worker's status can move between `running` and `lost`.
CREATE INDEX IF NOT EXISTS tasks_by_worker ON tasks (worker) WHERE state IN ('running', 'lost');
