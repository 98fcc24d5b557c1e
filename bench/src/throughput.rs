//! W1 (publish then drain no-op tasks with one worker process) and W4 (the same drain with
//! 1, 2 and 4 worker processes).

use crate::context::{progress, retry_once, Ctx, Published, Samples};
use crate::drain::{drain, Drain, DrainSpec};
use crate::launch::{Side, WorkerSettings};
use crate::payload::{Filler, NOOP};
use crate::report::{Row, Target, WorkloadReport};

/// Body size of a W1 task.
pub const BODY_BYTES: usize = 100;

/// One publish-then-drain repetition: publish `tasks` no-op tasks into a fresh queue, then
/// drain it with `processes` workers.
pub async fn publish_and_drain(
    ctx: &Ctx,
    side: Side,
    label: &str,
    processes: usize,
) -> anyhow::Result<(Published, Drain)> {
    publish_and_drain_with(ctx, side, label, processes, ctx.throughput_settings()).await
}

/// [`publish_and_drain`] with workers of the given settings.
pub async fn publish_and_drain_with(
    ctx: &Ctx,
    side: Side,
    label: &str,
    processes: usize,
    settings: WorkerSettings,
) -> anyhow::Result<(Published, Drain)> {
    let queue = ctx.broker.queue(&format!("{label}.{}", side.label()));
    let tasks = ctx.sizes.tasks;
    let filler = Filler::of_size(BODY_BYTES);
    let published = ctx.publish(side, &queue, NOOP, &filler, tasks).await?;
    let spec = DrainSpec {
        side,
        queue: &queue,
        tasks: tasks as u64,
        processes,
        settings,
    };
    let drained = drain(&ctx.launcher, &ctx.broker, &ctx.conn, spec).await?;
    Ok((published, drained))
}

/// W1: publish and drain throughput, end-to-end time, and the worker's RSS afterwards.
pub async fn w1(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    let n = ctx.sizes.tasks as f64;
    for rep in 0..ctx.reps {
        for side in Side::order(rep) {
            let label = format!("w1.r{rep}");
            let (p, d) = retry_once(&label, || publish_and_drain(ctx, side, &label, 1)).await?;
            let end_to_end = (d.done_at - p.start).as_secs_f64();
            let (publish, drain) = (n / p.took.as_secs_f64(), n / d.drain.as_secs_f64());
            samples.push("publish", side, publish);
            samples.push("drain", side, drain);
            samples.push("e2e", side, end_to_end);
            samples.push("startup", side, d.startup.as_secs_f64());
            samples.push("pub_cpu", side, p.cpu_seconds * 1e6 / n);
            samples.push("cpu", side, d.cpu_seconds * 1e6 / n);
            if let Some(io) = d.io_cpu_seconds {
                samples.push("io_cpu", side, io * 1e6 / n);
                samples.push("loop_cpu", side, (d.cpu_seconds - io) * 1e6 / n);
            }
            let broker_cpu = d.broker_cpu_seconds.map(|s| s * 1e6 / n);
            if let Some(us) = broker_cpu {
                samples.push("broker_cpu", side, us);
            }
            let broker_pub_cpu = p.broker_cpu_seconds.map(|s| s * 1e6 / n);
            if let Some(us) = broker_pub_cpu {
                samples.push("broker_pub_cpu", side, us);
            }
            samples.push("rss", side, d.rss_mib[0]);
            progress(
                "W1",
                rep,
                side,
                &format!(
                    "publish {publish:.0}/s, drain {drain:.0}/s, end-to-end {end_to_end:.3} s, \
                     startup {:.3} s, CPU/task publish {:.1} µs (broker {}), worker {:.1} µs, \
                     broker {}",
                    d.startup.as_secs_f64(),
                    p.cpu_seconds * 1e6 / n,
                    micros(broker_pub_cpu),
                    d.cpu_seconds * 1e6 / n,
                    micros(broker_cpu),
                ),
            );
        }
    }
    let row = |s: &mut Samples, key, metric, unit, target| {
        let (w, b) = s.take(key);
        Row::new(metric, unit, w, b, target)
    };
    // Only when every repetition of both sides could read the CPU time (the broker's: it must
    // run on this machine, visible to this user; threads': schedstat).
    let reps = ctx.reps as usize;
    let mut cpu_row = |key, metric| {
        let (w, b) = samples.take(key);
        (w.len() == reps && b.len() == reps).then(|| Row::new(metric, "µs", w, b, None))
    };
    let broker_pub_row = cpu_row("broker_pub_cpu", "broker CPU per task, publish");
    let broker_row = cpu_row("broker_cpu", "broker CPU per task, drain");
    let io_row = cpu_row("io_cpu", "worker CPU per task: lapin's I/O thread");
    let loop_row = cpu_row("loop_cpu", "worker CPU per task: every other thread");
    let t = &ctx.tuning;
    Ok(WorkloadReport {
        title: format!(
            "publish {} no-op tasks ({BODY_BYTES} B JSON body) with confirms, then drain them with one worker process",
            ctx.sizes.tasks
        ),
        settings: vec![
            format!("publisher: confirms pipelined, {} in flight (Warren: `Publisher::publish_all` window {}; baseline: a FIFO of `PublisherConfirm`s)", t.window, t.window),
            format!("worker: prefetch {}, concurrency {} (Warren: `warren-worker --prefetch {} --concurrency {}`; baseline: `multiple` ack at least every {} completions and whenever idle)", t.prefetch, t.concurrency, t.prefetch, t.concurrency, t.ack_every),
            "drain: from the worker process reporting ready (/readyz) to its success counter (/metrics) reaching the task count; end-to-end: from the first publish to the last task finished, including starting the worker process".to_owned(),
            "startup: from spawning the worker process to /readyz answering 200 (Warren declares its topology and opens two connections)".to_owned(),
            "CPU per task: CPU time (/proc/PID/task/*/schedstat) of the publishing process and of the broker during the publish, and of the worker process and of the broker (the local process listening on the AMQP port, when it can be read) during the drain, over the task count; the worker's is also split into its lapin I/O thread (`lapin-io-loop`: socket reads, frame parsing, writes) and every other thread (the consume loop and handlers, lapin's tasks, the runtime, the admin server)".to_owned(),
        ],
        rows: [
            row(&mut samples, "publish", "publish", "tasks/s", Some(Target::RatioAtLeast(0.9))),
            row(&mut samples, "drain", "drain", "tasks/s", Some(Target::RatioAtLeast(0.9))),
            row(&mut samples, "e2e", "end-to-end", "s", Some(Target::RatioAtMost(1.0 / 0.9))),
            row(&mut samples, "startup", "worker startup", "s", None),
            row(&mut samples, "pub_cpu", "publisher CPU per task", "µs", None),
        ]
        .into_iter()
        .chain(broker_pub_row)
        .chain([row(&mut samples, "cpu", "worker CPU per task", "µs", None)])
        .chain(io_row)
        .chain(loop_row)
        .chain(broker_row)
        .chain([row(&mut samples, "rss", "worker RSS after W1", "MiB", None)])
        .collect(),
    })
}

/// Microseconds, or "unknown".
fn micros(us: Option<f64>) -> String {
    us.map_or("unknown".to_owned(), |us| format!("{us:.1} µs"))
}

/// W4: W1's drain with 1, 2 and 4 worker processes.
pub async fn w4(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    let n = ctx.sizes.tasks as f64;
    for &processes in &ctx.sizes.scale_out {
        for rep in 0..ctx.reps {
            for side in Side::order(rep) {
                let label = format!("w4.p{processes}.r{rep}");
                let (_, d) =
                    retry_once(&label, || publish_and_drain(ctx, side, &label, processes)).await?;
                let rate = n / d.drain.as_secs_f64();
                samples.push(&processes.to_string(), side, rate);
                progress(
                    "W4",
                    rep,
                    side,
                    &format!("{processes} workers: drain {rate:.0}/s"),
                );
            }
        }
    }
    let rows = ctx
        .sizes
        .scale_out
        .iter()
        .map(|p| {
            let (w, b) = samples.take(&p.to_string());
            let metric = format!(
                "drain, {p} worker process{}",
                if *p == 1 { "" } else { "es" }
            );
            Row::new(&metric, "tasks/s", w, b, None)
        })
        .collect();
    let t = &ctx.tuning;
    Ok(WorkloadReport {
        title: format!("W1's drain of {} tasks with several worker processes", ctx.sizes.tasks),
        settings: vec![
            format!("each process: prefetch {}, concurrency {}", t.prefetch, t.concurrency),
            "drain: from the first process ready to the sum of the processes' success counters reaching the task count".to_owned(),
        ],
        rows,
    })
}
