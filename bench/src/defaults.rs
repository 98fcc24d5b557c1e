//! The `defaults` workload: what a user gets without flags. Warren's worker runs as shipped
//! (no `--concurrency`, no `--prefetch`, no `RUST_LOG`: its default `info` logging) against
//! the baseline tuned as in W1 and W2, on W1's no-op drain and W2's sleeping tasks; then a
//! burst of `demo.cpu` tasks shows that the wide default concurrency of async handlers does
//! not let CPU-bound ones oversubscribe the machine.

use crate::context::{progress, retry_once, Ctx, Samples};
use crate::http;
use crate::launch::{Side, WorkerSettings};
use crate::payload::{Cpu, CPU};
use crate::report::{Machine, Row, Target, WorkloadReport};
use crate::sleep::drain_sleeps;
use crate::throughput::publish_and_drain_with;
use anyhow::{bail, Context};
use std::time::Duration;

/// Warren's gauge of handlers running now.
const IN_PROGRESS: &str = "warren_tasks_in_progress";

/// The `defaults` workload.
pub async fn defaults(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    let n = ctx.sizes.tasks as f64;
    let stock = WorkerSettings::stock();
    for rep in 0..ctx.reps {
        for side in Side::order(rep) {
            let label = format!("defaults.w1.r{rep}");
            let settings = match side {
                Side::Warren => stock,
                Side::Baseline => ctx.throughput_settings(),
            };
            let run = || publish_and_drain_with(ctx, side, &label, 1, settings);
            let (_, d) = retry_once(&label, run).await?;
            let rate = n / d.drain.as_secs_f64();
            samples.push("w1", side, rate);
            samples.push("w1_cpu", side, d.cpu_seconds * 1e6 / n);
            progress("defaults W1", rep, side, &format!("drain {rate:.0}/s"));
        }
        for side in Side::order(rep) {
            let label = format!("defaults.w2.r{rep}.{}", side.label());
            let settings = match side {
                Side::Warren => stock,
                Side::Baseline => ctx.sleep_settings(),
            };
            let took = retry_once(&label, || drain_sleeps(ctx, side, &label, settings)).await?;
            samples.push("w2", side, took);
            progress("defaults W2", rep, side, &format!("drain {took:.3} s"));
        }
        let label = format!("defaults.cpu.r{rep}");
        let (most, took) = retry_once(&label, || cpu_burst(ctx, &label)).await?;
        samples.push("cpu_most", Side::Warren, most as f64);
        samples.push("cpu_drain", Side::Warren, took);
        progress(
            "defaults CPU",
            rep,
            Side::Warren,
            &format!("at most {most} running at once, drain {took:.3} s"),
        );
    }
    let cpus = Machine::detect().nproc;
    let sizes = &ctx.sizes;
    let (t, s) = (ctx.throughput_settings(), ctx.sleep_settings());
    let row = |s: &mut Samples, key, metric, unit, target| {
        let (w, b) = s.take(key);
        Row::new(metric, unit, w, b, target)
    };
    Ok(WorkloadReport {
        title: "Warren's worker with its defaults (no tuning flags, default logging) against the tuned baseline".to_owned(),
        settings: vec![
            "Warren: `warren-worker --queue Q` and nothing else: no --concurrency, --prefetch or RUST_LOG (concurrency 64, prefetch 512, CPU-bound handlers held to the number of CPUs, info logging)".to_owned(),
            format!("W1 drain: {} no-op tasks as in W1; baseline prefetch {}, concurrency {}", sizes.tasks, t.prefetch, t.concurrency),
            format!("W2 drain time: {} tasks sleeping {} ms as in W2; baseline concurrency {}, prefetch {}", sizes.sleep_tasks, sizes.sleep_ms, s.concurrency, s.prefetch),
            format!("demo.cpu: {} tasks of {} SHA-256 rounds each (run with `spawn_blocking`, registered CPU-bound), Warren only: the most `{IN_PROGRESS}` read while they drain (polled every millisecond), which must not exceed the machine's {cpus} CPUs", sizes.cpu_tasks, sizes.cpu_rounds),
        ],
        rows: vec![
            row(&mut samples, "w1", "W1 drain, Warren's defaults", "tasks/s", Some(Target::RatioAtLeast(0.7))),
            row(&mut samples, "w1_cpu", "W1 worker CPU per task, Warren's defaults", "µs", None),
            row(&mut samples, "w2", "W2 drain time, Warren's defaults", "s", Some(Target::RatioAtMost(1.1))),
            row(&mut samples, "cpu_most", "demo.cpu tasks running at once (most seen)", "tasks", Some(Target::WarrenAtMost(cpus as f64))),
            row(&mut samples, "cpu_drain", "demo.cpu drain time", "s", None),
        ],
    })
}

/// Drains a burst of `demo.cpu` tasks with the stock worker, polling how many run at once.
/// Returns the most seen and the drain time in seconds.
async fn cpu_burst(ctx: &Ctx, label: &str) -> anyhow::Result<(u64, f64)> {
    let sizes = &ctx.sizes;
    let queue = ctx.broker.queue(label);
    let payload = Cpu {
        rounds: sizes.cpu_rounds,
    };
    let tasks = sizes.cpu_tasks as u64;
    ctx.publish(Side::Warren, &queue, CPU, &payload, sizes.cpu_tasks)
        .await?;
    let proc = ctx
        .launcher
        .drain_worker(Side::Warren, &queue, WorkerSettings::stock())
        .await?;
    let ready = proc.wait_ready().await?;
    let path = format!("/metrics?name={IN_PROGRESS}");
    let mut most = 0;
    loop {
        let (status, body) = http::get(proc.admin, &path).await?;
        anyhow::ensure!(
            status == 200,
            "warren-worker answered /metrics with {status}"
        );
        most = most.max(http::metric_sum(&body, IN_PROGRESS) as u64);
        if proc.finished().await? >= tasks {
            break;
        }
        if ready.elapsed() > Duration::from_secs(300) {
            bail!("demo.cpu tasks did not finish:\n{}", proc.stderr_tail());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = ready.elapsed().as_secs_f64();
    let finished = proc.finished().await?;
    proc.stop(Duration::from_secs(20))
        .await
        .context("stopping warren-worker")?;
    let (left, _) = ctx.broker.inspect(&ctx.conn, &queue).await?;
    if left != 0 || finished != tasks {
        bail!("demo.cpu drain: {finished} of {tasks} finished, {left} left in the queue");
    }
    Ok((most, took))
}
