//! Heartbeats: while it records events, a worker says every few seconds, on the events stream,
//! who it is, what it consumes, which tasks it is running and its counts, and says farewell
//! when it drains. A reader that stops hearing from a worker knows it is gone, and which of
//! its tasks it was running (docs/wire-format.md §11.7).
//!
//! The tasks listed are those that recorded `started` (a handler still waiting after its
//! first poll), so keeping the list costs nothing to the tasks that finish at once.

use crate::Shared;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::events::{send_heartbeat, Heartbeat};
use warren_common::{now_ms, Publisher};

/// The ids of the tasks running now that recorded `started`, each with how many runs of it
/// there are (one id can be delivered twice at once).
#[derive(Default)]
pub(crate) struct Running {
    ids: Mutex<HashMap<String, u32>>,
}

impl Running {
    /// Lists `id` until the returned guard is dropped.
    pub(crate) fn list(&self, id: &str) -> Listed<'_> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        *ids.entry(id.to_owned()).or_default() += 1;
        Listed {
            running: self,
            id: id.to_owned(),
        }
    }

    fn ids(&self) -> Vec<String> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = ids.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// A task listed as running, until dropped.
pub(crate) struct Listed<'a> {
    running: &'a Running,
    id: String,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut ids = self.running.ids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = ids.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                ids.remove(&self.id);
            }
        }
    }
}

/// This worker's heartbeat now.
pub(crate) fn heartbeat(shared: &Shared, started_at_ms: u64) -> Heartbeat {
    let config = &shared.config;
    let t = shared.metrics.totals();
    let counts = [
        ("received", t.received),
        ("succeeded", t.succeeded),
        ("failed", t.failed),
        ("retried", t.retried),
        ("dead_lettered", t.dead_lettered),
        ("requeued", t.requeued),
    ]
    .into_iter()
    .map(|(name, count)| (name.to_owned(), count))
    .collect();
    Heartbeat {
        worker: config.worker_id.clone(),
        host: crate::defaults::hostname().unwrap_or_default(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        queues: config.queues.clone(),
        concurrency: config.concurrency as u64,
        prefetch: config.prefetch.into(),
        running: shared.running.ids(),
        counts,
        started_at_ms,
        at_ms: now_ms(),
        interval_ms: config.heartbeat_interval.as_millis() as u64,
    }
}

/// Sends a heartbeat through `publisher` every interval until `stop` fires, if the worker
/// records events. A heartbeat that cannot be sent is skipped: the next one says the same.
pub(crate) async fn beat(
    shared: &Shared,
    publisher: &Publisher,
    started_at_ms: u64,
    stop: &CancellationToken,
) {
    let Some(events) = &shared.events else {
        return;
    };
    let interval = shared.config.heartbeat_interval;
    loop {
        let heartbeat = heartbeat(shared, started_at_ms);
        if let Err(error) = send_heartbeat(publisher, events.stream(), &heartbeat, false).await {
            tracing::warn!(%error, "could not send a heartbeat");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Says farewell through `publisher`, if the worker records events: it drained and is gone.
pub(crate) async fn farewell(shared: &Shared, publisher: &Publisher, started_at_ms: u64) {
    const WAIT: Duration = Duration::from_secs(5);
    let Some(events) = &shared.events else {
        return;
    };
    let heartbeat = heartbeat(shared, started_at_ms);
    let sent = send_heartbeat(publisher, events.stream(), &heartbeat, true);
    match tokio::time::timeout(WAIT, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not say farewell"),
        Err(_) => tracing::warn!(timeout = ?WAIT, "could not say farewell in time"),
    }
}
