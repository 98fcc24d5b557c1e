//! The baseline worker process: one consumer with a prefetch limit, handlers run as futures
//! in the consume loop itself (up to `concurrency` at once, no task spawned per delivery),
//! and completed deliveries acked with one `multiple` ack for the contiguous prefix, at
//! least every `ack_every` completions and whenever the loop is about to wait. A delivery
//! naming a `reply_to` (the `calls` workload) is answered before its ack: the handler's
//! result as the body (`null` for `demo.noop`, the payload for `demo.echo`), with the
//! delivery's correlation id, through the default exchange, without a confirm.
//!
//! Like `warren-worker`, it answers `/readyz` and `/metrics` on an admin port it announces
//! on stderr, so the benchmark observes both sides the same way.

use crate::args::WorkerRoleArgs;
use crate::broker::{declare_plain_quorum, Broker};
use crate::payload::{now_us, Sleep, Stamp, ECHO, NOOP, SLEEP, STAMP};
use anyhow::{bail, Context};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The consumer tag: the very bytes `warren-worker` uses. The broker spends CPU on the tag in
/// every delivery in proportion to its length (docs/performance-findings.md, finding 19), so both
/// sides carry the same one.
const CONSUMER_TAG: &str = "warren";

/// The counter the benchmark polls on `/metrics`.
pub const SUCCEEDED_METRIC: &str = "bench_baseline_tasks_succeeded_total";

#[derive(Default)]
struct State {
    ready: AtomicBool,
    succeeded: AtomicU64,
}

/// Runs the baseline worker until SIGTERM, or until `expect_stamps` probes have run (then
/// prints their latencies in microseconds as a JSON array on stdout).
pub async fn run_worker(args: WorkerRoleArgs) -> anyhow::Result<()> {
    let state = Arc::new(State::default());
    serve_admin(state.clone()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let broker = Broker::new(&args.amqp_url);
    let conn = broker.connect("warren-bench baseline worker").await?;
    declare_plain_quorum(&conn, &args.queue).await?;
    state.ready.store(true, Ordering::Release);
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut run = Run {
        channel: &channel,
        ledger: Ledger::new(),
        ack_every: args.ack_every.max(1),
        state: &state,
        stamps: Vec::new(),
        expect: args.expect_stamps,
        replies: Vec::new(),
    };
    run.consume(consumer, args.concurrency.max(1), term.recv())
        .await?;
    if args.expect_stamps.is_some() {
        println!("{}", serde_json::to_string(&run.stamps)?);
    }
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

async fn serve_admin(state: Arc<State>) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!(
        "admin server listening admin_addr={}",
        listener.local_addr()?
    );
    crate::http::serve(listener, move |path: String| {
        let state = state.clone();
        async move {
            // The query (`?name=`) selects metrics; this page has only the one.
            match path.split('?').next().unwrap_or_default() {
                "/readyz" if state.ready.load(Ordering::Acquire) => (200, "ready\n".to_owned()),
                "/readyz" => (503, "connecting\n".to_owned()),
                "/metrics" => {
                    let n = state.succeeded.load(Ordering::Relaxed);
                    (200, format!("{SUCCEEDED_METRIC} {n}\n"))
                }
                _ => (404, String::new()),
            }
        }
    });
    Ok(())
}

struct Run<'a> {
    channel: &'a Channel,
    ledger: Ledger,
    ack_every: u64,
    state: &'a State,
    stamps: Vec<f64>,
    expect: Option<usize>,
    /// Replies of finished deliveries, sent before their ack.
    replies: Vec<Reply>,
}

/// A reply to a caller: where to, its correlation id, and the handler's result.
struct Reply {
    to: ShortString,
    correlation: Option<ShortString>,
    body: Vec<u8>,
}

/// A finished delivery: its tag, and the reply its caller waits for, if any.
type Done = (u64, Option<Reply>);

impl Run<'_> {
    async fn consume(
        &mut self,
        mut consumer: Consumer,
        concurrency: usize,
        stop: impl Future,
    ) -> anyhow::Result<()> {
        let mut running = FuturesUnordered::new();
        let mut stop = std::pin::pin!(stop);
        while !(self.expect.is_some_and(|n| self.stamps.len() >= n) && running.is_empty()) {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(done) = running.next(), if !running.is_empty() => self.finished(done),
                next = consumer.next(), if running.len() < concurrency => {
                    running.push(self.start(next)?);
                }
            }
            // Take whatever else is ready without waiting, acking as the batch grows.
            loop {
                let mut progressed = false;
                while let Some(Some(done)) = running.next().now_or_never() {
                    self.finished(done);
                    progressed = true;
                    if self.ledger.ackable() >= self.ack_every {
                        self.ack().await?;
                    }
                }
                if running.len() < concurrency {
                    if let Some(next) = consumer.next().now_or_never() {
                        running.push(self.start(next)?);
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            // About to wait: settle what is done.
            self.ack().await?;
        }
        self.ack().await
    }

    /// Decodes a delivery and returns its handler, which yields the delivery tag (and the
    /// reply to send, if the delivery names a `reply_to`) when done.
    fn start(
        &mut self,
        next: Option<lapin::Result<Delivery>>,
    ) -> anyhow::Result<impl Future<Output = Done>> {
        let delivery = match next {
            Some(delivery) => delivery.context("the consumer failed")?,
            None => bail!("the broker cancelled the consumer"),
        };
        let task = delivery.properties.kind().as_ref().map(|s| s.as_str());
        let body = &delivery.data;
        let mut result = b"null".to_vec();
        let sleep = match task.unwrap_or("") {
            NOOP => {
                serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
                None
            }
            ECHO => {
                serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
                result = body.clone();
                None
            }
            SLEEP => Some(Duration::from_millis(
                serde_json::from_slice::<Sleep>(body)?.ms,
            )),
            STAMP => {
                let stamp: Stamp = serde_json::from_slice(body)?;
                let started = now_us();
                self.stamps
                    .push(started.saturating_sub(stamp.created_us) as f64);
                None
            }
            other => bail!("no handler for task `{other}`"),
        };
        let props = &delivery.properties;
        let reply = props.reply_to().clone().map(|to| Reply {
            to,
            correlation: props.correlation_id().clone(),
            body: result,
        });
        Ok(handler(delivery.delivery_tag, sleep, reply))
    }

    fn finished(&mut self, (tag, reply): Done) {
        self.ledger.done(tag);
        self.replies.extend(reply);
        self.state.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the replies of finished deliveries, then acks them.
    async fn ack(&mut self) -> anyhow::Result<()> {
        for reply in std::mem::take(&mut self.replies) {
            let mut props = BasicProperties::default();
            if let Some(correlation) = reply.correlation {
                props = props.with_correlation_id(correlation);
            }
            self.channel
                .basic_publish(
                    "".into(),
                    reply.to,
                    BasicPublishOptions::default(),
                    &reply.body,
                    props,
                )
                .await
                .context("publishing a reply")?;
        }
        if let Some(up_to) = self.ledger.take() {
            self.channel
                .basic_ack(up_to, BasicAckOptions { multiple: true })
                .await
                .context("basic.ack")?;
        }
        Ok(())
    }
}

async fn handler(tag: u64, sleep: Option<Duration>, reply: Option<Reply>) -> Done {
    if let Some(duration) = sleep {
        tokio::time::sleep(duration).await;
    }
    (tag, reply)
}

/// Which delivery tags are done, and the highest one a `multiple` ack may name: every tag
/// up to it is done.
struct Ledger {
    /// Lowest tag not done yet (tags start at 1 on a fresh channel).
    next: u64,
    /// Done tags above `next`.
    ahead: BTreeSet<u64>,
    /// Highest tag acked.
    acked: u64,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            next: 1,
            ahead: BTreeSet::new(),
            acked: 0,
        }
    }

    fn done(&mut self, tag: u64) {
        if tag != self.next {
            self.ahead.insert(tag);
            return;
        }
        self.next += 1;
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
    }

    /// Done tags a `multiple` ack would settle now.
    fn ackable(&self) -> u64 {
        self.next - 1 - self.acked
    }

    /// The tag to ack with `multiple`, if any is new.
    fn take(&mut self) -> Option<u64> {
        (self.ackable() > 0).then(|| {
            self.acked = self.next - 1;
            self.acked
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_acks_the_contiguous_prefix_only() {
        let mut ledger = Ledger::new();
        ledger.done(2);
        assert_eq!(ledger.take(), None);
        ledger.done(1);
        assert_eq!(ledger.ackable(), 2);
        assert_eq!(ledger.take(), Some(2));
        assert_eq!(ledger.take(), None);
        ledger.done(4);
        ledger.done(3);
        assert_eq!(ledger.take(), Some(4));
    }
}
