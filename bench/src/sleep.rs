//! W2: many short sleeping tasks on one worker with concurrency 16, where the worker's
//! overhead per task and the timer's granularity decide the drain time.

use crate::context::{progress, retry_once, Ctx, Samples};
use crate::drain::{drain, DrainSpec};
use crate::launch::Side;
use crate::launch::WorkerSettings;
use crate::payload::{Sleep, SLEEP};
use crate::report::{Row, Target, WorkloadReport};

/// W2: the drain time of `sleep_tasks` tasks of `sleep_ms` each.
pub async fn w2(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    let sizes = &ctx.sizes;
    let settings = ctx.sleep_settings();
    for rep in 0..ctx.reps {
        for side in Side::order(rep) {
            let label = format!("w2.r{rep}.{}", side.label());
            let d = retry_once(&label, || drain_sleeps(ctx, side, &label, settings)).await?;
            samples.push("drain", side, d);
            progress("W2", rep, side, &format!("drain {d:.3} s"));
        }
    }
    let ideal =
        sizes.sleep_tasks as f64 * sizes.sleep_ms as f64 / 1000.0 / settings.concurrency as f64;
    let (w, b) = samples.take("drain");
    Ok(WorkloadReport {
        title: format!(
            "{} tasks sleeping {} ms (`tokio::time::sleep`) on one worker, concurrency {}",
            sizes.sleep_tasks, sizes.sleep_ms, settings.concurrency
        ),
        settings: vec![
            format!(
                "ideal drain {ideal:.3} s; tokio's timer sleeps 10 ms as ~10.5-11 ms, a floor of \
                 ~1.39 s for 2,000 tasks"
            ),
            format!(
                "worker: concurrency {}, prefetch {} on both sides (`--workload defaults` runs \
                 Warren's worker without these flags); tasks published before the worker \
                 starts; drain measured as in W1",
                settings.concurrency, settings.prefetch
            ),
        ],
        rows: vec![Row::new(
            "drain time",
            "s",
            w,
            b,
            Some(Target::RatioAtMost(1.05)),
        )],
    })
}

/// W2's drain on a fresh queue `label` with `settings`: seconds. The `defaults` workload
/// runs it too, with the stock worker's own settings.
pub(crate) async fn drain_sleeps(
    ctx: &Ctx,
    side: Side,
    label: &str,
    settings: WorkerSettings,
) -> anyhow::Result<f64> {
    let sizes = &ctx.sizes;
    let queue = ctx.broker.queue(label);
    let payload = Sleep { ms: sizes.sleep_ms };
    ctx.publish(side, &queue, SLEEP, &payload, sizes.sleep_tasks)
        .await?;
    let spec = DrainSpec {
        side,
        queue: &queue,
        tasks: sizes.sleep_tasks as u64,
        processes: 1,
        settings,
    };
    let d = drain(&ctx.launcher, &ctx.broker, &ctx.conn, spec).await?;
    Ok(d.drain.as_secs_f64())
}
