//! A task in a queue's isolation queue runs alone in its worker: it starts only once every
//! running task of the process has finished, and nothing else starts until it is done (so a
//! crash during its run can only be its own). Against the real broker, with a worker in this
//! process whose handlers record what runs at the same time.

use lapin::BasicProperties;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_common::isolation_queue_name;
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{HandlerOptions, Payload, Registry, TaskContext, TaskError};

/// What ran beside what.
#[derive(Default)]
struct Watch {
    /// Ordinary tasks running now.
    busy: AtomicUsize,
    /// The most ordinary tasks seen running at once.
    most: AtomicUsize,
    /// The isolated task is running.
    alone: AtomicBool,
    /// Times a task ran beside the isolated one.
    overlaps: AtomicUsize,
}

fn handlers(watch: &Arc<Watch>) -> Registry {
    let mut registry = Registry::new();
    let (busy, alone) = (watch.clone(), watch.clone());
    let any = HandlerOptions::default();
    registry
        .register_raw("probe.busy", any, move |_: TaskContext, _: Payload| {
            let watch = busy.clone();
            async move {
                let now = watch.busy.fetch_add(1, Ordering::SeqCst) + 1;
                watch.most.fetch_max(now, Ordering::SeqCst);
                if watch.alone.load(Ordering::SeqCst) {
                    watch.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                watch.busy.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        })
        .register_raw("probe.alone", any, move |_: TaskContext, _: Payload| {
            let watch = alone.clone();
            async move {
                watch.alone.store(true, Ordering::SeqCst);
                if watch.busy.load(Ordering::SeqCst) > 0 {
                    watch.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                watch.alone.store(false, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_from_the_isolation_queue_runs_with_nothing_beside_it() {
    let queue = unique_queue("alone");
    let watch = Arc::new(Watch::default());
    let worker = TestWorker::start(handlers(&watch), test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    for _ in 0..60 {
        publisher
            .publish("probe.busy", &(), &TaskOptions::default())
            .await
            .unwrap();
    }
    // Into the isolation queue as a worker moves a task there: through the default exchange.
    let props = BasicProperties::default()
        .with_type("probe.alone".into())
        .with_message_id("the-isolated-one".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let isolation = isolation_queue_name(&queue);
    publisher
        .publish_raw("", &isolation, b"null", props, "the-isolated-one")
        .await
        .unwrap();
    for _ in 0..60 {
        publisher
            .publish("probe.busy", &(), &TaskOptions::default())
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(30), "every task to succeed", || async {
        worker.metric("warren_tasks_succeeded_total", &[]) == 121.0
    })
    .await;
    // Concurrency 4: the ordinary tasks ran side by side, the isolated one with none of them.
    assert!(
        watch.most.load(Ordering::SeqCst) >= 2,
        "no two tasks overlapped"
    );
    assert_eq!(watch.overlaps.load(Ordering::SeqCst), 0);
    let alone = [("task", "probe.alone")];
    assert_eq!(worker.metric("warren_tasks_succeeded_total", &alone), 1.0);
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 121);
    publisher.close().await;
    delete_queues(&raw_connection().await, &queue).await;
}
