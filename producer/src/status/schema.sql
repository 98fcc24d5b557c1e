-- The status index file (docs/status.md), layout version 3 (`PRAGMA user_version`; store.rs
-- refuses a file of another). `tasks` holds one row per task: its status and the rank of the
-- event that decided it (docs/wire-format.md §11.6: replays, attempt, delivery count, phase,
-- then stream position: epoch, offset, sequence number), and what its `published` event
-- said (when, and the payload's copy as JSON) whichever event decides it. `counts` holds the tasks per
-- queue and state, changed in the same transactions. `progress` is where the index is in the
-- stream (the last batch applied and what identifies it), `gaps` the events it may miss.
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    replays INTEGER,
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
    published_at_ms INTEGER,
    payload TEXT,
    rank_replays INTEGER NOT NULL,
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
-- Dead-lettered and expired tasks of a queue, newest first (the dead letters of the queue's
-- page, filtered by task or reason kind): partial, so they hold only those tasks, and range
-- scans however many tasks of other states the queue has. The queries repeat the `WHERE`
-- word for word, which is how SQLite knows it can use them.
CREATE INDEX IF NOT EXISTS tasks_dead ON tasks (queue, updated_at_ms, id)
    WHERE state IN ('dead_lettered', 'expired');
CREATE INDEX IF NOT EXISTS tasks_dead_by_kind ON tasks (queue, error_kind, updated_at_ms, id)
    WHERE state IN ('dead_lettered', 'expired');
CREATE INDEX IF NOT EXISTS tasks_dead_by_task ON tasks (queue, task, updated_at_ms, id)
    WHERE state IN ('dead_lettered', 'expired');
-- `dead_letters` counts those tasks per queue and error kind (`''` for one without), changed
-- in the same transactions as the tasks, so the kinds present and their counts are read
-- without a scan.
CREATE TABLE IF NOT EXISTS dead_letters (
    queue TEXT NOT NULL,
    kind TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    PRIMARY KEY (queue, kind)
) WITHOUT ROWID;
-- `history` is each task's timeline (layout 3): one row per event read, those the merge rule
-- outranks included, keyed by the task and the event's rank (§11.6), whose last part is its
-- stream position, so an event read again is the same row and the rows read in key order are
-- the rank order. A task keeps its first `published` event and its 50 latest others
-- (history.rs); its rows are deleted with it.
CREATE TABLE IF NOT EXISTS history (
    id TEXT NOT NULL,
    rank_replays INTEGER NOT NULL,
    rank_attempt INTEGER NOT NULL,
    rank_delivery_count INTEGER NOT NULL,
    rank_phase INTEGER NOT NULL,
    position_epoch INTEGER NOT NULL,
    position_offset INTEGER NOT NULL,
    position_seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    source TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    attempt INTEGER,
    replays INTEGER,
    delivery_count INTEGER,
    error_kind TEXT,
    error_reason TEXT,
    retry_at_ms INTEGER,
    PRIMARY KEY (id, rank_replays, rank_attempt, rank_delivery_count, rank_phase,
        position_epoch, position_offset, position_seq)
) WITHOUT ROWID;
-- `throughput` counts the endings and retries recorded per 10-second bucket of their `at_ms`
-- and per queue (layout 3), each event once, in the same transactions as the events; buckets
-- older than an hour are deleted (throughput.rs).
CREATE TABLE IF NOT EXISTS throughput (
    bucket_ms INTEGER NOT NULL,
    queue TEXT NOT NULL,
    succeeded INTEGER NOT NULL,
    retried INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    PRIMARY KEY (bucket_ms, queue)
) WITHOUT ROWID;
