//! `calls`: the round trip of a call, publishing a task and waiting for its end over direct
//! reply-to (docs/wire-format.md §12). Warren's side is `Publisher::call_named` against the
//! real `warren-worker` (`demo.noop`, and `demo.echo`, whose result rides back in the reply);
//! the baseline is a hand-written lapin RPC ([`RawCaller`]) against the baseline worker,
//! which answers the same tasks. Calls one after the other, then `callers` at once.

use crate::baseline::RawCaller;
use crate::context::{progress, retry_once, Ctx, Samples};
use crate::launch::Side;
use crate::payload::{self, Filler, ECHO, NOOP};
use crate::report::{Row, WorkloadReport};
use crate::stats::latency_figures;
use crate::warren;
use anyhow::{bail, ensure, Context};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use warren_common::reply::ReplyStatus;
use warren_producer::Publisher;

/// The body of every call: W1's 100 bytes of JSON.
const BODY_BYTES: usize = 100;
/// Untimed calls first (opening the reply channel, warming both processes).
const WARM_UP: usize = 20;
/// How long one call may wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The `calls` workload.
pub async fn calls(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    for rep in 0..ctx.reps {
        for side in Side::order(rep) {
            let what = format!("calls rep {} {}", rep + 1, side.label());
            let figures = retry_once(&what, || run_side(ctx, side, rep)).await?;
            let mut line = Vec::new();
            for (key, latencies) in figures.latencies {
                let (p50, p99, _) = latency_figures(latencies).context("no calls were timed")?;
                samples.push(&format!("{key} p50"), side, p50 / 1000.0);
                samples.push(&format!("{key} p99"), side, p99 / 1000.0);
                line.push(format!(
                    "{key} p50 {:.2} ms p99 {:.2} ms",
                    p50 / 1000.0,
                    p99 / 1000.0
                ));
            }
            if let Some(rate) = figures.rate {
                samples.push("rate", side, rate);
                line.push(format!("{rate:.0} calls/s"));
            }
            progress("calls", rep, side, &line.join(", "));
        }
    }
    let sizes = &ctx.sizes;
    let mut rows = Vec::new();
    for key in Figures::keys(sizes.callers) {
        for p in ["p50", "p99"] {
            let (w, b) = samples.take(&format!("{key} {p}"));
            rows.push(Row::new(
                &format!("{key}, round trip {p}"),
                "ms",
                w,
                b,
                None,
            ));
        }
    }
    if sizes.callers > 0 {
        let (w, b) = samples.take("rate");
        let metric = format!("{} callers at once, calls completed", sizes.callers);
        rows.push(Row::new(&metric, "calls/s", w, b, None));
    }
    let settings = ctx.sleep_settings();
    Ok(WorkloadReport {
        title: format!(
            "{} calls one after the other of each task, then {} callers at once ({} calls in all), each waiting for its task's reply over direct reply-to",
            sizes.calls, sizes.callers, sizes.calls
        ),
        settings: vec![
            format!("worker: concurrency {}, prefetch {}; payload {BODY_BYTES} bytes of JSON; {WARM_UP} untimed calls first", settings.concurrency, settings.prefetch),
            "Warren: `Publisher::call_named` (what `Publisher::call` runs before decoding the result) with the JSON codec, against `warren-worker`'s built-in `demo.noop` (replies without a result) and `demo.echo` (its payload as the result)".to_owned(),
            "baseline: a lapin confirm channel consuming `amq.rabbitmq.reply-to`, each request published with `reply_to` and a correlation id; a call waits for its confirm, then its reply; the baseline worker replies with the handler's result as the body (`null`, or the payload) before its ack".to_owned(),
            "round trip: from the call starting (Warren builds the envelope) to the reply decoded and checked (the status, and for demo.echo the result equal to the payload)".to_owned(),
        ],
        rows,
    })
}

/// One side's measurements: latencies in microseconds by row, and the concurrent rate.
struct Figures {
    latencies: Vec<(&'static str, Vec<f64>)>,
    rate: Option<f64>,
}

impl Figures {
    /// The rows' names, in order.
    fn keys(callers: usize) -> Vec<&'static str> {
        let mut keys = vec![NOOP, ECHO];
        if callers > 0 {
            keys.push(CONCURRENT);
        }
        keys
    }
}

/// The row of the concurrent calls.
const CONCURRENT: &str = "demo.noop, callers at once";

/// One repetition of one side: its queue, worker and caller, the sequential calls of each
/// task, then the concurrent ones. Checks that the worker ran every call.
async fn run_side(ctx: &Ctx, side: Side, rep: u32) -> anyhow::Result<Figures> {
    let sizes = &ctx.sizes;
    let queue = ctx.broker.queue(&format!("calls.r{rep}.{}", side.label()));
    let caller = Caller::connect(ctx, side, &queue).await?;
    let proc = ctx
        .launcher
        .drain_worker(side, &queue, ctx.sleep_settings())
        .await?;
    proc.wait_ready().await?;
    ctx.broker.wait_for_consumer(&ctx.conn, &queue).await?;
    let filler = Filler::of_size(BODY_BYTES);
    for _ in 0..WARM_UP {
        caller.call(&queue, NOOP, &filler).await?;
    }
    let mut latencies = Vec::new();
    for task in [NOOP, ECHO] {
        let mut timed = Vec::with_capacity(sizes.calls);
        for _ in 0..sizes.calls {
            let start = Instant::now();
            caller.call(&queue, task, &filler).await?;
            timed.push(start.elapsed().as_secs_f64() * 1e6);
        }
        latencies.push((task, timed));
    }
    let mut rate = None;
    if sizes.callers > 0 {
        let (timed, per_s) = concurrent(&caller, &queue, sizes.calls, sizes.callers).await?;
        latencies.push((CONCURRENT, timed));
        rate = Some(per_s);
    }
    let ran = proc.finished().await?;
    let expected = (WARM_UP + 2 * sizes.calls + sizes.callers.min(1) * sizes.calls) as u64;
    proc.stop(Duration::from_secs(20))
        .await
        .with_context(|| format!("stopping the {} worker", side.label()))?;
    caller.close().await;
    ensure!(
        ran == expected,
        "the {} worker ran {ran} tasks, not the {expected} called",
        side.label()
    );
    Ok(Figures { latencies, rate })
}

/// `calls` no-op calls split among `callers` tasks calling one after the other: every
/// latency (microseconds) and the calls completed per second.
async fn concurrent(
    caller: &Caller,
    queue: &str,
    calls: usize,
    callers: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let filler = Arc::new(Filler::of_size(BODY_BYTES));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for n in 0..callers {
        let share = calls / callers + usize::from(n < calls % callers);
        let (caller, queue, filler) = (caller.clone(), queue.to_owned(), filler.clone());
        tasks.push(tokio::spawn(async move {
            let mut timed = Vec::with_capacity(share);
            for _ in 0..share {
                let at = Instant::now();
                caller.call(&queue, NOOP, &filler).await?;
                timed.push(at.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(timed)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await.context("a caller panicked")??);
    }
    Ok((all, calls as f64 / start.elapsed().as_secs_f64()))
}

/// Either side's caller.
#[derive(Clone)]
enum Caller {
    Warren(Publisher),
    Baseline(Arc<RawCaller>),
}

impl Caller {
    async fn connect(ctx: &Ctx, side: Side, queue: &str) -> anyhow::Result<Caller> {
        Ok(match side {
            Side::Warren => Caller::Warren(warren::publisher(&ctx.broker, queue).await?),
            Side::Baseline => {
                Caller::Baseline(Arc::new(RawCaller::connect(&ctx.broker, queue).await?))
            }
        })
    }

    /// Calls `task` with `payload` and checks the reply: a success, and for `demo.echo` the
    /// payload back as the result.
    async fn call(&self, queue: &str, task: &str, payload: &Filler) -> anyhow::Result<()> {
        let result = match self {
            Caller::Warren(publisher) => {
                let options = warren_producer::TaskOptions {
                    queue: Some(queue.to_owned()),
                    ..warren::json_options()
                };
                let reply = publisher
                    .call_named(task, payload, &options, CALL_TIMEOUT)
                    .await
                    .with_context(|| format!("calling {task}"))?;
                if reply.status != ReplyStatus::Succeeded {
                    bail!("{task} did not succeed: {reply:?}");
                }
                reply
                    .result
                    .map_or("null".to_owned(), |r| r.get().to_owned())
                    .into_bytes()
            }
            Caller::Baseline(caller) => {
                let body = payload::json(payload);
                let call = caller.call(queue, task, &body);
                tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .with_context(|| format!("no reply to {task} within {CALL_TIMEOUT:?}"))??
            }
        };
        let expected = match task {
            ECHO => payload::json(payload),
            _ => b"null".to_vec(),
        };
        ensure!(
            result == expected,
            "{task} answered {:?}",
            String::from_utf8_lossy(&result)
        );
        Ok(())
    }

    async fn close(&self) {
        match self {
            Caller::Warren(publisher) => publisher.close().await,
            Caller::Baseline(caller) => caller.close().await,
        }
    }
}
