//! The stall watchdog: a consumer that silently stops receiving while its queue has ready
//! tasks (here its channel is frozen on the broker) is noticed by the worker's monitor,
//! counted, and re-subscribed on a new channel without waiting for the wedged one,
//! and every task still runs. Runs against a private RabbitMQ node, so the only channels
//! frozen are the worker's.

use crate::WorkerProcess;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_producer::{Publisher, PublisherConfig, TaskOptions};
use warren_tests::*;

/// Suspends every broker channel process that has a consumer: it stops sending deliveries
/// and answering, as a wedged channel would, while the connection stays up. A suspension
/// lasts as long as the process that made it, so a registered process holds it until told
/// to thaw (the eval's own process ends with the command).
const FREEZE_CONSUMERS: &str = "Self = self(), \
    Pid = spawn(fun() -> \
        [erlang:suspend_process(P) || P <- rabbit_channel:list(), \
            {consumer_count, N} <- rabbit_channel:info(P, [consumer_count]), N > 0], \
        Self ! frozen, \
        receive thaw -> ok end \
    end), \
    register(warren_freezer, Pid), \
    receive frozen -> ok after 5000 -> exit(not_frozen) end.";
/// Ends the freezer, which undoes its suspensions.
const THAW: &str = "warren_freezer ! thaw, ok.";

async fn stalls(worker: &WorkerProcess, queue: &str) -> f64 {
    let metrics = worker.scrape().await;
    sample(
        &metrics,
        "warren_consumer_stalls_total",
        &[("queue", queue)],
    )
}

#[tokio::test]
async fn a_consumer_frozen_on_the_broker_is_resubscribed_and_every_task_runs() {
    let Some(node) = PrivateNode::start_or_skip("stall") else {
        return;
    };
    let queue = unique_queue("stall");
    let args = [
        "--queue",
        &queue,
        "--prefetch",
        "4",
        "--poll-interval",
        "300ms",
    ];
    let worker = WorkerProcess::start(&args, &node.url()).await;
    wait_until(Duration::from_secs(30), "the worker ready", || async {
        worker.readiness().await == 200
    })
    .await;

    assert!(
        node.ctl(&["eval", FREEZE_CONSUMERS]),
        "freezing the consumer's channel"
    );
    let config = PublisherConfig {
        amqp: node.url().parse().unwrap(),
        default_queue: queue.clone(),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &CancellationToken::new())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let options = TaskOptions::default();
        ids.push(publisher.publish("demo.noop", &(), &options).await.unwrap());
    }

    // The first 4 go to the frozen channel; 16 stay ready while the worker receives nothing.
    wait_until(
        Duration::from_secs(15),
        "the stall to be counted",
        || async { stalls(&worker, &queue).await >= 1.0 },
    )
    .await;
    let lines = worker.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("consumer stalled"),
        "the worker logged the stall"
    );
    // The worker does not wait for the wedged channel: its cancel times out, a new channel
    // takes the 16 ready tasks, and the old connection is closed (the broker finishes
    // closing it once the channel can act again).
    let finished = |worker: &WorkerProcess| -> usize {
        let finished: HashSet<String> = worker.finished_ids().into_iter().collect();
        ids.iter().filter(|id| finished.contains(*id)).count()
    };
    wait_until(
        Duration::from_secs(30),
        "the ready tasks to run on a new session",
        || {
            let done = finished(&worker);
            async move { done >= 16 }
        },
    )
    .await;
    // Thawed, the old channel closes, and the 4 tasks it held go back to the queue.
    assert!(node.ctl(&["eval", THAW]), "thawing the channels");
    let all = ids.len();
    wait_until(Duration::from_secs(60), "every task to run", || {
        let done = finished(&worker);
        async move { done == all }
    })
    .await;
    assert_eq!(
        stalls(&worker, &queue).await,
        1.0,
        "one stall, counted once"
    );
    publisher.close().await;
}
