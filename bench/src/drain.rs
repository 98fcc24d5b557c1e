//! The drain measurement behind W1, W2, W4 and the memory workload, identical for both
//! sides: start the worker processes on a queue already full, and time from the first
//! process reporting ready (`/readyz` 200: connected, about to subscribe) to the sum of the
//! processes' success counters (`/metrics`) reaching the number of tasks published.
//!
//! The counters are polled adaptively: every 50 ms while far from done, then every 1 ms as
//! the estimated finish nears, so the end is seen within about a millisecond while the
//! scrapes cost the workers little (each asks for the one counter, `/metrics?name=`: Warren's
//! whole page renders every series, a few hundred microseconds of the worker's CPU).

use crate::broker::Broker;
use crate::launch::{Launcher, Side, WorkerSettings};
use crate::process::{cpu_seconds, Proc};
use anyhow::{bail, Context};
use futures::future::{select_all, try_join_all};
use futures::FutureExt;
use lapin::Connection;
use std::time::Duration;
use tokio::time::Instant;

/// How long stopped workers get to exit.
const GRACE: Duration = Duration::from_secs(20);

/// One drain.
#[derive(Clone, Debug)]
pub struct Drain {
    /// From starting the processes to the first one ready.
    pub startup: Duration,
    /// From the first process ready to the last task finished.
    pub drain: Duration,
    /// When the last task finished.
    pub done_at: Instant,
    /// Each process's resident memory at the end, MiB.
    pub rss_mib: Vec<f64>,
    /// CPU time the processes used during the drain (from the first ready), seconds.
    pub cpu_seconds: f64,
    /// Of `cpu_seconds`, what the processes' lapin I/O threads used (`None`: no schedstat).
    pub io_cpu_seconds: Option<f64>,
    /// CPU time the broker used during the drain, seconds (`None`: the broker is not a local
    /// process whose CPU time this user can read).
    pub broker_cpu_seconds: Option<f64>,
}

/// What to drain.
pub struct DrainSpec<'a> {
    /// Whose workers.
    pub side: Side,
    /// The queue, holding `tasks` messages.
    pub queue: &'a str,
    /// Tasks to wait for.
    pub tasks: u64,
    /// Worker processes.
    pub processes: usize,
    /// Their settings.
    pub settings: WorkerSettings,
}

/// Drains `spec.queue` with fresh worker processes, then stops them and checks the queue is
/// empty.
pub async fn drain(
    launcher: &Launcher,
    broker: &Broker,
    conn: &Connection,
    spec: DrainSpec<'_>,
) -> anyhow::Result<Drain> {
    let broker_pid = broker.local_pid();
    let started = Instant::now();
    let procs = try_join_all(
        (0..spec.processes).map(|_| launcher.drain_worker(spec.side, spec.queue, spec.settings)),
    )
    .await?;
    let (first_ready, _, _) = select_all(procs.iter().map(|p| p.wait_ready().boxed())).await;
    let first_ready = first_ready?;
    let cpu = || procs.iter().map(Proc::cpu_seconds).sum::<Result<f64, _>>();
    let io_cpu = || procs.iter().map(Proc::io_cpu_seconds).sum::<Option<f64>>();
    let broker_cpu = || broker_pid.as_deref().and_then(|pid| cpu_seconds(pid).ok());
    let (cpu_at_ready, io_at_ready, broker_at_ready) = (cpu()?, io_cpu(), broker_cpu());
    let done_at = wait_finished(&procs, spec.tasks, first_ready).await?;
    let cpu_seconds = cpu()? - cpu_at_ready;
    let io_cpu_seconds = io_cpu().zip(io_at_ready).map(|(end, start)| end - start);
    let broker_cpu_seconds = broker_cpu()
        .zip(broker_at_ready)
        .map(|(end, start)| end - start);
    let rss_mib = procs.iter().map(Proc::rss_mib).collect::<Result<_, _>>()?;
    let finished: u64 = try_join_all(procs.iter().map(Proc::finished))
        .await?
        .into_iter()
        .sum();
    try_join_all(procs.into_iter().map(|p| p.stop(GRACE))).await?;
    let (ready, _) = broker.inspect(conn, spec.queue).await?;
    if ready != 0 || finished != spec.tasks {
        bail!(
            "{} drain of `{}`: {finished} tasks finished of {} and {ready} left in the queue",
            spec.side.label(),
            spec.queue,
            spec.tasks
        );
    }
    Ok(Drain {
        startup: first_ready - started,
        drain: done_at - first_ready,
        done_at,
        rss_mib,
        cpu_seconds,
        io_cpu_seconds,
        broker_cpu_seconds,
    })
}

/// Polls the processes' success counters until they add up to `tasks`.
async fn wait_finished(procs: &[Proc], tasks: u64, start: Instant) -> anyhow::Result<Instant> {
    let limit = Duration::from_secs(300);
    loop {
        let counts = try_join_all(procs.iter().map(Proc::finished)).await?;
        let now = Instant::now();
        let total: u64 = counts.iter().sum();
        if total >= tasks {
            return Ok(now);
        }
        let elapsed = now - start;
        if elapsed > limit {
            let tails: Vec<String> = procs.iter().map(Proc::stderr_tail).collect();
            return Err(anyhow::anyhow!("{}", tails.join("\n---\n")))
                .with_context(|| format!("only {total} of {tasks} tasks finished in {limit:?}"));
        }
        tokio::time::sleep(next_poll(total, tasks, elapsed)).await;
    }
}

/// Half the estimated time left, between 1 and 50 ms.
fn next_poll(done: u64, tasks: u64, elapsed: Duration) -> Duration {
    let min = Duration::from_millis(1);
    if done == 0 {
        return Duration::from_millis(2);
    }
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-6);
    let left = Duration::from_secs_f64((tasks - done) as f64 / rate / 2.0);
    left.clamp(min, Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_slowly_when_far_and_quickly_when_near() {
        let ms = Duration::from_millis;
        assert_eq!(next_poll(1_000, 20_000, ms(100)), ms(50));
        assert_eq!(next_poll(19_990, 20_000, ms(200)), ms(1));
        assert_eq!(next_poll(0, 20_000, ms(5)), ms(2));
    }
}
