//! W3: probes published at a steady rate while a worker runs, for both sides at once (one
//! probe to each side per tick); the latency of each is the time from its creation (a
//! microsecond timestamp in the payload, taken just before the publish call) to its handler
//! starting, read by the handler itself on the same clock.
//!
//! Warren's `x-warren-created-ms` header has millisecond granularity, too coarse for
//! sub-millisecond latencies, and its queue-latency histogram has coarse buckets; so Warren's
//! side is a `warren_worker::Worker` run in a child process with a `bench.stamp` handler
//! registered by the benchmark, and the baseline worker runs the same handler.

use crate::baseline::RawPublisher;
use crate::context::{progress, retry_once, Ctx, Samples};
use crate::launch::Side;
use crate::payload::{self, Stamp, STAMP};
use crate::process::Proc;
use crate::report::{Row, Target, WorkloadReport};
use crate::stats::latency_figures;
use crate::warren;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// W3: p50, p99 and max creation-to-handler latency.
pub async fn w3(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    for rep in 0..ctx.reps {
        let what = format!("W3 rep {}", rep + 1);
        let paired = retry_once(&what, || run_probes(ctx, rep)).await?;
        for (side, latencies) in paired {
            let (p50, p99, max) =
                latency_figures(latencies).context("the worker reported no latencies")?;
            for (key, value) in [("p50", p50), ("p99", p99), ("max", max)] {
                samples.push(key, side, value / 1000.0);
            }
            progress(
                "W3",
                rep,
                side,
                &format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    p50 / 1000.0,
                    p99 / 1000.0,
                    max / 1000.0
                ),
            );
        }
    }
    let sizes = &ctx.sizes;
    let settings = ctx.sleep_settings();
    let mut rows = Vec::new();
    for (key, target) in [("p50", Some(1.2)), ("p99", Some(1.2)), ("max", None)] {
        let (w, b) = samples.take(key);
        rows.push(Row::new(
            &format!("latency {key}"),
            "ms",
            w,
            b,
            target.map(Target::RatioAtMost),
        ));
    }
    Ok(WorkloadReport {
        title: format!(
            "{} probes published at a steady {}/s to each side's worker, both sides at once; latency from creation to handler start",
            sizes.probes, sizes.probe_rate
        ),
        settings: vec![
            format!("worker: concurrency {}, prefetch {}; each probe published with a confirm (not awaited before the next)", settings.concurrency, settings.prefetch),
            "paired: each tick publishes one probe to each side's queue (which goes first alternates), so a stall of the shared machine delays both sides' probes alike; run one after the other, a few such stalls decided each side's p99 (ratios 0.74-1.36 for one build)".to_owned(),
            "creation time: microseconds in the payload, stamped in the probe's own publishing task just before the publish call (so Warren's envelope building counts); both processes read the same wall clock".to_owned(),
            "Warren side: `warren_worker::Worker` in a child process with a `bench.stamp` handler (the ms-granular `x-warren-created-ms` header is too coarse)".to_owned(),
        ],
        rows,
    })
}

/// One side of a W3 repetition: its queue, publisher and worker process.
struct Probed {
    side: Side,
    queue: String,
    publish: Publish,
    proc: Proc,
}

impl Probed {
    async fn start(ctx: &Ctx, side: Side, rep: u32) -> anyhow::Result<Probed> {
        let queue = ctx.broker.queue(&format!("w3.r{rep}.{}", side.label()));
        let publish = Publish::connect(ctx, side, &queue).await?;
        let proc = ctx
            .launcher
            .latency_worker(side, &queue, ctx.sleep_settings(), ctx.sizes.probes)
            .await?;
        proc.wait_ready().await?;
        ctx.broker.wait_for_consumer(&ctx.conn, &queue).await?;
        Ok(Probed {
            side,
            queue,
            publish,
            proc,
        })
    }

    /// Waits for the worker to report every probe; returns the latencies in microseconds.
    async fn latencies(self, rep: u32) -> anyhow::Result<(Side, Vec<f64>)> {
        self.publish.close().await;
        let out = self.proc.wait_exit(Duration::from_secs(60)).await?;
        let latencies: Vec<f64> =
            serde_json::from_str(out.trim()).context("reading the worker's latencies")?;
        // For looking at the tail: every latency, in the order the handlers started.
        if let Ok(dir) = std::env::var(DUMP_ENV) {
            let name = format!("w3-{}-r{rep}.json", self.side.label());
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, &out).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok((self.side, latencies))
    }
}

/// Runs one repetition for both sides at once: each tick publishes one probe to each side's
/// queue (which goes first alternates), so a stall of the shared machine (the broker's, the
/// hypervisor's) delays both sides' probes alike instead of landing in one side's run only.
/// Returns each side's latencies in microseconds.
async fn run_probes(ctx: &Ctx, rep: u32) -> anyhow::Result<Vec<(Side, Vec<f64>)>> {
    let [first, second] = Side::order(rep);
    let sides = [
        Probed::start(ctx, first, rep).await?,
        Probed::start(ctx, second, rep).await?,
    ];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.sizes.probe_rate));
    let mut confirms = Vec::with_capacity(2 * ctx.sizes.probes);
    for n in 0..ctx.sizes.probes {
        tick.tick().await;
        let order = if n % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let probed = &sides[i];
            confirms.push(probed.publish.send(&probed.queue));
        }
    }
    for confirm in confirms {
        confirm.await??;
    }
    let [a, b] = sides;
    let (a, b) = tokio::try_join!(a.latencies(rep), b.latencies(rep))?;
    Ok(vec![a, b])
}

/// Environment variable naming a directory where W3 writes every latency it measured.
pub const DUMP_ENV: &str = "WARREN_BENCH_DUMP";

enum Publish {
    Warren(warren_producer::Publisher),
    Baseline(Arc<RawPublisher>),
}

impl Publish {
    async fn connect(ctx: &Ctx, side: Side, queue: &str) -> anyhow::Result<Publish> {
        Ok(match side {
            Side::Warren => Publish::Warren(warren::publisher(&ctx.broker, queue).await?),
            Side::Baseline => {
                let envelope = ctx.tuning.baseline_envelope;
                Publish::Baseline(Arc::new(
                    RawPublisher::connect(&ctx.broker, queue, envelope).await?,
                ))
            }
        })
    }

    /// Sends a probe from a task of its own, stamped there just before the publish call (so
    /// Warren's envelope building counts, and neither side's probe waits for the other's
    /// publish); the handle resolves once the broker confirmed it.
    fn send(&self, queue: &str) -> JoinHandle<anyhow::Result<()>> {
        match self {
            Publish::Warren(publisher) => {
                let publisher = publisher.clone();
                tokio::spawn(async move {
                    publisher
                        .publish(STAMP, &Stamp::now(), &warren::json_options())
                        .await?;
                    Ok(())
                })
            }
            Publish::Baseline(publisher) => {
                let (publisher, queue) = (publisher.clone(), queue.to_owned());
                tokio::spawn(async move {
                    let body = payload::json(&Stamp::now());
                    let confirm = publisher.publish(&queue, STAMP, &body).await?;
                    crate::baseline::check(confirm.await?)
                })
            }
        }
    }

    async fn close(self) {
        match self {
            Publish::Warren(publisher) => publisher.close().await,
            Publish::Baseline(publisher) => publisher.close().await,
        }
    }
}
