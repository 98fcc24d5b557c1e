//! Memory: a worker process's resident set idle after start, and after a W1 drain.

use crate::context::{progress, retry_once, Ctx, Samples};
use crate::launch::Side;
use crate::report::{Row, Target, WorkloadReport};
use crate::throughput::publish_and_drain;
use std::time::Duration;

/// RSS of an idle worker and of one that has just drained W1.
pub async fn memory(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    for rep in 0..ctx.reps {
        for side in Side::order(rep) {
            let label = format!("mem.idle.r{rep}.{}", side.label());
            let idle = retry_once(&label, || idle_rss(ctx, side, &label)).await?;
            let label = format!("mem.w1.r{rep}");
            let (_, d) = retry_once(&label, || publish_and_drain(ctx, side, &label, 1)).await?;
            let after = d.rss_mib[0];
            samples.push("idle", side, idle);
            samples.push("after", side, after);
            progress(
                "memory",
                rep,
                side,
                &format!("RSS idle {idle:.1} MiB, after W1 {after:.1} MiB"),
            );
        }
    }
    let (wi, bi) = samples.take("idle");
    let (wa, ba) = samples.take("after");
    let t = &ctx.tuning;
    Ok(WorkloadReport {
        title: "worker resident memory (VmRSS from /proc/PID/status)".to_owned(),
        settings: vec![
            format!(
                "idle: a fresh worker on an empty queue, read {:?} after /readyz answered 200",
                ctx.sizes.idle
            ),
            format!(
                "after W1: read as soon as a worker (prefetch {}, concurrency {}) finished \
                 draining {} tasks",
                t.prefetch, t.concurrency, ctx.sizes.tasks
            ),
        ],
        rows: vec![
            Row::new("RSS idle", "MiB", wi, bi, Some(Target::WarrenAtMost(15.0))),
            Row::new(
                "RSS after W1",
                "MiB",
                wa,
                ba,
                Some(Target::WarrenAtMost(64.0)),
            ),
        ],
    })
}

/// The RSS of a fresh worker idling on an empty queue.
async fn idle_rss(ctx: &Ctx, side: Side, label: &str) -> anyhow::Result<f64> {
    let queue = ctx.broker.queue(label);
    let proc = ctx
        .launcher
        .drain_worker(side, &queue, ctx.throughput_settings())
        .await?;
    proc.wait_ready().await?;
    tokio::time::sleep(ctx.sizes.idle).await;
    let idle = proc.rss_mib()?;
    proc.stop(Duration::from_secs(20)).await?;
    Ok(idle)
}
