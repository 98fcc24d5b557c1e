//! The leader's work while it holds the lease: declare the work and state queues, decide where
//! each schedule resumes (the missed-tick policy), then publish each tick as it falls due and
//! record it, all on the lease's connection.

use super::lease;
use super::schedule::{tick_rfc3339, MissedPolicy, Schedule};
use super::state;
use super::{SchedulerConfig, SchedulerError, SchedulerMetrics};
use crate::{PublishError, Publisher, PublisherConfig, TaskOptions};
use lapin::{Connection, ConnectionStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::{now_ms, Codec, QueueSpec};

/// How a term as leader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Term {
    /// Shutdown was asked for; the lease connection is closed.
    Drained,
    /// The lease connection was lost (or became unusable and was closed).
    Lost,
}

/// Where a schedule stands.
struct Cursor {
    /// The next tick to publish; `None` when the schedule never fires again.
    next: Option<u64>,
    /// Whether `next` is the catch-up tick of the `run_once` policy.
    catch_up: bool,
    /// After a failed publish: not before this time.
    retry_at: u64,
}

/// Why a tick was not published.
enum TickError {
    /// The lease connection is gone or unusable.
    Lost,
    /// This tick failed; retry it later.
    Retry,
}

/// Leads until `cancel` fires or the lease connection is lost. Publishes on `conn` only.
pub(crate) async fn lead(
    conn: Connection,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    cancel: &CancellationToken,
) -> Result<Term, SchedulerError> {
    let status = conn.status().clone();
    let publisher_config = PublisherConfig {
        amqp: config.amqp.clone(),
        exchange: config.exchange.clone(),
        via_exchange: config.via_exchange,
        confirm_timeout: config.confirm_timeout,
        connection_name: config.connection_name(),
        ..PublisherConfig::default()
    };
    let publisher = match Publisher::on_connection(conn, publisher_config).await {
        Ok(publisher) => match &config.events {
            Some(events) => publisher.with_events(events.clone()),
            None => publisher,
        },
        Err(error) => {
            tracing::warn!(%error, "could not publish on the lease connection");
            return Ok(Term::Lost);
        }
    };
    let term = match prepare(&publisher, config, metrics).await {
        Ok(Some(cursors)) => run(&publisher, &status, cursors, config, metrics, cancel).await,
        Ok(None) => Term::Lost,
        Err(error) => {
            publisher.close().await;
            return Err(error);
        }
    };
    // Waits for outstanding confirms, then closes the connection, which frees the lease.
    publisher.close().await;
    Ok(term)
}

/// Declares the work queues and the state queues and reads where each schedule stands.
/// `None` when the connection was lost or the state cannot be read now.
async fn prepare(
    publisher: &Publisher,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
) -> Result<Option<Vec<Cursor>>, SchedulerError> {
    for schedule in &config.schedules {
        let spec =
            QueueSpec::new(&schedule.queue, schedule.queue_type).with_retention(config.retention);
        match publisher.declare(&spec).await {
            Ok(()) => {}
            Err(PublishError::Topology(error)) if error.is_permanent() => {
                // The queue exists with other settings (e.g. the workers' dead-letter
                // retention): publishing to it still works.
                tracing::warn!(schedule = %schedule.name, %error, "work queue not declared; publishing to it as it is");
            }
            Err(error) => {
                tracing::warn!(%error, "lost the lease connection while declaring queues");
                return Ok(None);
            }
        }
    }
    let mut cursors = Vec::with_capacity(config.schedules.len());
    for schedule in &config.schedules {
        let recorded = match state::load(publisher, &config.lease_name, &schedule.name).await {
            Ok(recorded) => recorded,
            Err(state::LoadError::Refused { queue, source }) => {
                return Err(SchedulerError::State { queue, source });
            }
            Err(state::LoadError::Unavailable { queue, reason }) => {
                // Starting from now could skip ticks for good: step down (which releases the
                // lease) and let the next term read the state again.
                tracing::warn!(schedule = %schedule.name, queue, reason, "the schedule's state cannot be read now; stepping down to try again");
                return Ok(None);
            }
        };
        cursors.push(resume(schedule, recorded, now_ms(), metrics));
    }
    Ok(Some(cursors))
}

/// Applies the missed-tick policy to the ticks between the recorded one and `now`.
fn resume(
    schedule: &Schedule,
    recorded: Option<u64>,
    now: u64,
    metrics: &SchedulerMetrics,
) -> Cursor {
    let name = schedule.name.as_str();
    let Some(last) = recorded else {
        tracing::info!(schedule = name, "no tick recorded yet: starting from now");
        return Cursor::at(schedule.next_after(now), false);
    };
    let (missed, latest) = schedule.ticks_between(last, now);
    let resume_at = schedule.next_after(last.max(now));
    let last_tick = tick_rfc3339(last);
    match (schedule.missed, latest) {
        (MissedPolicy::RunOnce, Some(latest)) => {
            metrics.missed.with_label_values(&[name]).inc_by(missed - 1);
            tracing::info!(
                schedule = name,
                last_tick,
                missed,
                policy = "run_once",
                "ticks missed while no scheduler led: publishing the latest once"
            );
            Cursor::at(Some(latest), true)
        }
        (MissedPolicy::Skip, Some(_)) => {
            metrics.missed.with_label_values(&[name]).inc_by(missed);
            tracing::info!(
                schedule = name,
                last_tick,
                missed,
                policy = "skip",
                "ticks missed while no scheduler led: skipping them"
            );
            Cursor::at(resume_at, false)
        }
        (_, None) => {
            tracing::info!(
                schedule = name,
                last_tick,
                "resuming after the recorded tick"
            );
            Cursor::at(resume_at, false)
        }
    }
}

impl Cursor {
    fn at(next: Option<u64>, catch_up: bool) -> Self {
        Cursor {
            next,
            catch_up,
            retry_at: 0,
        }
    }

    /// When this schedule wants to publish next.
    fn due(&self) -> Option<u64> {
        self.next.map(|tick| tick.max(self.retry_at))
    }
}

/// Publishes ticks as they fall due, earliest first, until shutdown or the lease is lost.
async fn run(
    publisher: &Publisher,
    status: &ConnectionStatus,
    mut cursors: Vec<Cursor>,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    cancel: &CancellationToken,
) -> Term {
    loop {
        let earliest = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.due().map(|due| (due, i)))
            .min();
        let wait = match earliest {
            Some((due, _)) => Duration::from_millis(due.saturating_sub(now_ms())),
            None => Duration::MAX,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Term::Drained,
            _ = lease::lost(status) => {
                tracing::warn!("lost the lease connection");
                return Term::Lost;
            }
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
        }
        let Some((due, i)) = earliest.filter(|(due, _)| now_ms() >= *due) else {
            continue; // woken early (the clock moved, or the hourly re-check)
        };
        let (schedule, cursor) = (&config.schedules[i], &mut cursors[i]);
        let tick = cursor.next.unwrap_or(due);
        match publish_tick(publisher, schedule, tick, cursor.catch_up, config, metrics).await {
            Ok(()) => *cursor = Cursor::at(schedule.next_after(tick), false),
            Err(TickError::Retry) => cursor.retry_at = now_ms() + retry_delay(config),
            Err(TickError::Lost) => return Term::Lost,
        }
    }
}

fn retry_delay(config: &SchedulerConfig) -> u64 {
    u64::try_from(config.lease_retry.as_millis()).unwrap_or(1000)
}

/// Publishes one tick's task and then records the tick, each with a confirm.
async fn publish_tick(
    publisher: &Publisher,
    schedule: &Schedule,
    tick: u64,
    catch_up: bool,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
) -> Result<(), TickError> {
    let name = schedule.name.as_str();
    let task_id = schedule.task_id(tick);
    let options = TaskOptions {
        id: Some(task_id.clone()),
        queue: Some(schedule.queue.clone()),
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    };
    let published = publisher
        .publish(&schedule.task, &schedule.payload, &options)
        .await;
    if let Err(error) = published {
        metrics.failures.with_label_values(&[name]).inc();
        if error.kind() == "connection" {
            tracing::warn!(schedule = name, task_id, %error, "lost the lease connection while publishing");
            return Err(TickError::Lost);
        }
        tracing::error!(schedule = name, task_id, %error, "tick not published; retrying");
        return Err(TickError::Retry);
    }
    metrics.published.with_label_values(&[name]).inc();
    tracing::info!(
        schedule = name, task_id, task = %schedule.task, queue = %schedule.queue,
        tick_ms = tick, catch_up, "tick published"
    );
    let queue = state::queue_name(&config.lease_name, name);
    match state::write(publisher, &queue, tick, &task_id).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == "connection" => {
            // The task is out but not recorded: the next leader may publish it again.
            tracing::warn!(schedule = name, task_id, %error, "lost the lease connection before recording the tick");
            Err(TickError::Lost)
        }
        Err(error) => {
            // Not retried: the task is out; the next record overwrites this one anyway.
            tracing::error!(schedule = name, task_id, %error, "tick published but not recorded");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::schedule;

    fn every_second(missed: &str) -> Schedule {
        let toml = format!(
            "[[schedule]]\nname = \"s\"\ntask = \"t\"\nevery = \"1s\"\nmissed = \"{missed}\"\n"
        );
        schedule::parse(&toml, "test.toml").unwrap().remove(0)
    }

    fn metrics() -> SchedulerMetrics {
        SchedulerMetrics::new(&prometheus::Registry::new(), ["s"]).unwrap()
    }

    fn missed(metrics: &SchedulerMetrics) -> u64 {
        metrics.missed.with_label_values(&["s"]).get()
    }

    #[test]
    fn a_first_run_starts_from_now() {
        let m = metrics();
        let cursor = resume(&every_second("run_once"), None, 10_500, &m);
        assert_eq!((cursor.next, cursor.catch_up), (Some(11_000), false));
        assert_eq!(missed(&m), 0);
    }

    #[test]
    fn skip_publishes_none_of_the_missed_ticks_and_counts_them() {
        let m = metrics();
        // Recorded 10 s; now 14.5 s: 11, 12, 13 and 14 were missed.
        let cursor = resume(&every_second("skip"), Some(10_000), 14_500, &m);
        assert_eq!((cursor.next, cursor.catch_up), (Some(15_000), false));
        assert_eq!(missed(&m), 4);
    }

    #[test]
    fn run_once_publishes_the_latest_missed_tick_once() {
        let m = metrics();
        let cursor = resume(&every_second("run_once"), Some(10_000), 14_500, &m);
        assert_eq!((cursor.next, cursor.catch_up), (Some(14_000), true));
        assert_eq!(missed(&m), 3);
    }

    #[test]
    fn nothing_missed_resumes_after_the_record_even_if_it_is_ahead_of_the_clock() {
        let m = metrics();
        let schedule = every_second("run_once");
        let cursor = resume(&schedule, Some(10_000), 10_700, &m);
        assert_eq!((cursor.next, cursor.catch_up), (Some(11_000), false));
        // A previous leader whose clock ran ahead recorded 20 s: nothing up to it is repeated.
        let cursor = resume(&schedule, Some(20_000), 10_700, &m);
        assert_eq!(cursor.next, Some(21_000));
        assert_eq!(missed(&m), 0);
    }
}
