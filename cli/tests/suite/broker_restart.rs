//! The broker goes away under load — stopped cleanly, then killed — and comes back: worker
//! and producer recover on their own, readiness shows it, and every confirmed task runs.
//! Runs against a private RabbitMQ node; the system broker is never touched.

use crate::WorkerProcess;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::Readiness;
use warren_producer::{Publisher, PublisherConfig, TaskOptions};
use warren_tests::*;

#[derive(Default)]
struct Load {
    confirmed: Vec<String>,
    failed: usize,
}

/// Publishes a task every 5 ms until `stop`, recording what was confirmed and what failed.
fn start_load(
    publisher: Publisher,
    stop: CancellationToken,
) -> (Arc<Mutex<Load>>, tokio::task::JoinHandle<()>) {
    let load = Arc::new(Mutex::new(Load::default()));
    let record = load.clone();
    let handle = tokio::spawn(async move {
        while !stop.is_cancelled() {
            match publisher
                .publish("demo.noop", &(), &TaskOptions::default())
                .await
            {
                Ok(id) => record.lock().unwrap().confirmed.push(id),
                Err(_) => record.lock().unwrap().failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (load, handle)
}

async fn readiness_is(worker: &WorkerProcess, code: u16, within: Duration) {
    wait_until(within, &format!("readiness {code}"), || async {
        worker.readiness().await == code
    })
    .await;
}

#[tokio::test]
async fn worker_and_producer_recover_from_a_clean_restart_and_from_a_killed_broker() {
    let Some(node) = PrivateNode::start_or_skip("restart") else {
        return;
    };
    let queue = unique_queue("restart");
    let worker = WorkerProcess::start(&["--queue", &queue], &node.url()).await;
    readiness_is(&worker, 200, Duration::from_secs(30)).await;

    let config = PublisherConfig {
        amqp: node.url().parse().unwrap(),
        default_queue: queue.clone(),
        confirm_timeout: Duration::from_secs(2),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &CancellationToken::new())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let (load, handle) = start_load(publisher.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A clean stop and start (this also makes the queue predate a restart, which quorum
    // queues need to survive the kill -9 below).
    node.stop();
    readiness_is(&worker, 503, Duration::from_secs(10)).await;
    wait_until(
        Duration::from_secs(10),
        "the producer to report the loss",
        || {
            let state = publisher.health().get();
            async move { state != Readiness::Ready }
        },
    )
    .await;
    node.boot();
    readiness_is(&worker, 200, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(30), "the producer to reconnect", || {
        let ready = publisher.health().get() == Readiness::Ready;
        async move { ready }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    node.kill();
    readiness_is(&worker, 503, Duration::from_secs(10)).await;
    node.boot();
    readiness_is(&worker, 200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    handle.await.unwrap();

    let (confirmed, failed) = {
        let load = load.lock().unwrap();
        (load.confirmed.clone(), load.failed)
    };
    assert!(
        confirmed.len() > 100,
        "the load ran: {} confirmed",
        confirmed.len()
    );
    wait_until(
        Duration::from_secs(60),
        "every confirmed task to run",
        || {
            let finished: std::collections::HashSet<String> =
                worker.finished_ids().into_iter().collect();
            let missing = confirmed
                .iter()
                .filter(|id| !finished.contains(*id))
                .count();
            async move { missing == 0 }
        },
    )
    .await;
    let lines = worker.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("lost the broker; reconnecting"),
        "the worker logged the loss"
    );
    eprintln!(
        "{} tasks confirmed, {failed} publishes failed during the outages",
        confirmed.len()
    );
    publisher.close().await;
}
