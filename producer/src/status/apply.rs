//! Applying one event to the index, inside the store's transaction: it joins its task's
//! timeline ([`history`]), counts toward the throughput and dead-letter counters, and becomes
//! the task's status if it outranks the stored one (the merge rule of docs/wire-format.md
//! §11.6, in [`super::merge`]).

use super::dead_letters;
use super::history;
use super::merge::{supersedes, Position, Rank, State};
use super::store::{state_column, Applied};
use super::workers;
use rusqlite::{params, OptionalExtension, Transaction};
use warren_common::events::{EventKind, Stamped};

/// The stored rank and status of a task, as the merge needs them.
struct Stored {
    rank: Rank,
    state: State,
    queue: String,
    started_at_ms: Option<u64>,
    error_kind: Option<String>,
}

/// Applies one event: it joins its task's timeline, and becomes the task's status if it
/// outranks the stored one. Events of tasks not indexed older than `horizon_ms` are left out;
/// `now_ms` is the index's clock (the throughput counters' age).
pub(super) fn apply_event(
    tx: &Transaction<'_>,
    stamped: &Stamped,
    rank: Rank,
    (horizon_ms, now_ms): (u64, u64),
    applied: &mut Applied,
) -> rusqlite::Result<()> {
    let event = &stamped.event;
    let stored = stored(tx, &event.id)?;
    if stored.is_none() && event.at_ms < horizon_ms {
        applied.outdated += 1;
        return Ok(());
    }
    if history::record(tx, stamped, &rank, stored.is_none())? {
        applied.throughput.count(event, now_ms);
    }
    match &stored {
        Some(s) if !supersedes(&rank, Some(&s.rank)) => {
            // A late `published` still tells when, and with which payload.
            if event.event == EventKind::Published {
                tx.prepare_cached(
                    "UPDATE tasks SET published_at_ms = coalesce(published_at_ms, ?2),
                     payload = coalesce(payload, ?3) WHERE id = ?1",
                )?
                .execute(params![event.id, event.at_ms, payload_json(event)])?;
            }
            // A run's late `started` still tells when the run began.
            if event.event == EventKind::Started
                && rank.same_run(&s.rank)
                && s.started_at_ms.is_none()
            {
                tx.prepare_cached("UPDATE tasks SET started_at_ms = ?2 WHERE id = ?1")?
                    .execute(params![event.id, event.at_ms])?;
            }
            applied.superseded += 1;
            return Ok(());
        }
        _ => {}
    }
    let state = match State::after(event.event) {
        State::Running if workers::is_gone(tx, &stamped.source)? => State::Lost,
        state => state,
    };
    let started_at_ms = match &stored {
        _ if event.event == EventKind::Started => Some(event.at_ms),
        Some(s) if s.rank.same_run(&rank) => s.started_at_ms,
        _ => None,
    };
    let ended_at_ms = state.is_ended().then_some(event.at_ms);
    let (error_kind, error_reason) = match &event.error {
        Some(e) => (Some(e.kind.as_ref()), Some(e.reason.as_ref())),
        None => (None, None),
    };
    let published_at_ms = (event.event == EventKind::Published).then_some(event.at_ms);
    tx.prepare_cached(
        "INSERT INTO tasks (id, task, queue, state, attempt, delivery_count, worker,
            updated_at_ms, started_at_ms, ended_at_ms, retry_at_ms, error_kind, error_reason,
            rank_attempt, rank_delivery_count, rank_phase,
            position_epoch, position_offset, position_seq,
            replays, rank_replays, published_at_ms, payload, result, result_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, ?24, ?25)
         ON CONFLICT (id) DO UPDATE SET task = ?2, queue = ?3, state = ?4, attempt = ?5,
            delivery_count = ?6, worker = ?7, updated_at_ms = ?8, started_at_ms = ?9,
            ended_at_ms = ?10, retry_at_ms = ?11, error_kind = ?12, error_reason = ?13,
            rank_attempt = ?14, rank_delivery_count = ?15, rank_phase = ?16,
            position_epoch = ?17, position_offset = ?18, position_seq = ?19,
            replays = ?20, rank_replays = ?21,
            published_at_ms = coalesce(?22, published_at_ms), payload = coalesce(?23, payload),
            result = ?24, result_error = ?25",
    )?
    .execute(params![
        event.id,
        event.task,
        event.queue,
        state.as_str(),
        event.attempt,
        event.delivery_count,
        stamped.source,
        event.at_ms,
        started_at_ms,
        ended_at_ms,
        event.retry_at_ms,
        error_kind,
        error_reason,
        rank.attempt,
        rank.delivery_count,
        rank.phase,
        rank.position.epoch,
        rank.position.offset,
        rank.position.seq,
        event.replays,
        rank.replays,
        published_at_ms,
        payload_json(event),
        event.result.as_ref().map(|r| r.get()),
        event.result_error,
    ])?;
    if let Some(s) = stored {
        let kind = s.error_kind.as_deref();
        dead_letters::count(&mut applied.dead_letters, &s.queue, s.state, kind, -1);
        *applied.counts.entry((s.queue, s.state)).or_default() -= 1;
    }
    dead_letters::count(
        &mut applied.dead_letters,
        &event.queue,
        state,
        error_kind,
        1,
    );
    *applied
        .counts
        .entry((event.queue.to_string(), state))
        .or_default() += 1;
    applied.applied += 1;
    Ok(())
}

fn stored(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Stored>> {
    tx.prepare_cached(
        "SELECT rank_attempt, rank_delivery_count, rank_phase, position_epoch, position_offset,
            position_seq, state, queue, started_at_ms, rank_replays, error_kind
         FROM tasks WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(Stored {
            rank: Rank {
                replays: r.get(9)?,
                attempt: r.get(0)?,
                delivery_count: r.get(1)?,
                phase: r.get(2)?,
                position: Position {
                    epoch: r.get(3)?,
                    offset: r.get(4)?,
                    seq: r.get(5)?,
                },
            },
            state: state_column(r, 6)?,
            queue: r.get(7)?,
            started_at_ms: r.get(8)?,
            error_kind: r.get(10)?,
        })
    })
    .optional()
}

/// The payload's copy a `published` event carries, as the JSON the index stores.
fn payload_json(event: &warren_common::events::Event<'_>) -> Option<String> {
    let copy = event.payload.as_ref()?;
    // A copy read from JSON writes back as JSON.
    serde_json::to_string(copy).ok()
}
