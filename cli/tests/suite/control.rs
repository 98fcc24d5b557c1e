//! The control stream against the real broker (docs/wire-format.md §13): a task cancelled
//! while queued, delayed or running never runs or is stopped, is acked and recorded as
//! `cancelled`, and is not retried; a cancellation written before a worker started is honoured
//! by it; pausing a queue stops every worker consuming it and gives prefetched deliveries
//! back without raising their delivery count; bad input is refused with a clear error; a
//! worker consumes nothing until it has read the stream, and writes snapshots of its state.

mod pause;
mod stream;

use crate::binary;
use crate::events::read_events;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_common::events::{EventKind, Stamped};
use warren_common::QueueSpec;
use warren_producer::{Control, ControlError, Publisher, TaskOptions};
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError, WorkerConfig};

/// A queue, its control and events streams, unique to one test.
pub(crate) struct Names {
    queue: String,
    control: String,
    events: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        let queue = unique_queue(prefix);
        Names {
            control: format!("{queue}.control"),
            events: format!("{queue}.events"),
            queue,
        }
    }

    /// A worker configuration following the control stream and recording events.
    fn config(&self) -> WorkerConfig {
        let mut config = test_config(&self.queue);
        config.control_stream = Some(self.control.clone());
        config.events_stream = Some(self.events.clone());
        config
    }

    /// A publisher with the queue declared as the worker declares it.
    async fn publisher(&self) -> Publisher {
        let publisher = publisher(&self.queue).await;
        let config = self.config();
        let spec = QueueSpec::new(&self.queue, config.queue_type).with_retention(config.retention);
        publisher.declare(&spec).await.unwrap();
        publisher
    }

    async fn clean_up(self) {
        let conn = raw_connection().await;
        delete_queues(&conn, &self.queue).await;
        let channel = conn.create_channel().await.unwrap();
        for stream in [&self.control, &self.events] {
            let _ = channel
                .queue_delete(stream.as_str().into(), Default::default())
                .await;
        }
    }
}

/// Runs of each task id, counted by the test's handlers.
#[derive(Clone, Default)]
pub(crate) struct Runs(Arc<Mutex<BTreeMap<String, u64>>>);

impl Runs {
    fn record(&self, ctx: &TaskContext) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(ctx.id.to_string())
            .or_default() += 1;
    }

    fn of(&self, id: &str) -> u64 {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

/// `t.count` (counts its runs), `t.sleep` (counts, then sleeps `ms`) and `t.wait` (counts,
/// then waits until cancelled, telling `dropped` when its future is dropped).
pub(crate) fn registry(runs: &Runs, dropped: &Arc<AtomicBool>) -> Registry {
    let mut registry = Registry::new();
    let (count, sleep, wait) = (runs.clone(), runs.clone(), runs.clone());
    let dropped = dropped.clone();
    registry
        .register("t.count", move |ctx: TaskContext, _: ()| {
            count.record(&ctx);
            async { Ok::<_, TaskError>(()) }
        })
        .register("t.sleep", move |ctx: TaskContext, ms: u64| {
            sleep.record(&ctx);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, TaskError>(())
            }
        })
        .register("t.wait", move |ctx: TaskContext, _: ()| {
            wait.record(&ctx);
            let guard = DropFlag(dropped.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, TaskError>(())
            }
        });
    registry
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The kinds of the events of task `id`, in stream order.
fn kinds(events: &[Stamped], id: &str) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.event.id == id)
        .map(|e| e.event.event)
        .collect()
}

/// Reads the events stream until every id in `ids` has an ending.
pub(crate) async fn endings(stream: &str, ids: &[String]) -> Vec<Stamped> {
    read_events(stream, |events| {
        ids.iter().all(|id| {
            events
                .iter()
                .any(|e| e.event.id == *id && e.event.event.is_ending())
        })
    })
    .await
}

#[tokio::test]
async fn a_cancel_written_before_the_worker_started_is_honoured_and_the_task_never_runs() {
    let names = Names::new("control-queued");
    let publisher = names.publisher().await;
    let options = TaskOptions::new;
    let cancelled = publisher
        .publish("t.count", &(), &options())
        .await
        .unwrap()
        .to_string();
    let kept = publisher
        .publish("t.count", &(), &options())
        .await
        .unwrap()
        .to_string();
    let control = Control::new(publisher.clone(), &names.control);
    control.cancel(&cancelled).await.unwrap();

    let (runs, dropped) = (Runs::default(), Arc::default());
    let worker = TestWorker::start(registry(&runs, &dropped), names.config()).await;
    let events = endings(&names.events, &[cancelled.clone(), kept.clone()]).await;
    assert_eq!(kinds(&events, &cancelled), [EventKind::Cancelled]);
    assert_eq!(kinds(&events, &kept), [EventKind::Succeeded]);
    assert_eq!((runs.of(&cancelled), runs.of(&kept)), (0, 1));

    // The same id published again after the cancel is a new run: it is not cancelled.
    publisher
        .publish("t.count", &(), &options().id(cancelled.as_str()))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the republished task to run",
        || {
            let runs = runs.clone();
            let id = cancelled.clone();
            async move { runs.of(&id) == 1 }
        },
    )
    .await;
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 2);
    assert_eq!(report.totals.retried + report.totals.dead_lettered, 0);
    let conn = raw_connection().await;
    assert_eq!(
        ready_count(&conn, &names.queue).await,
        0,
        "every task acked"
    );
    names.clean_up().await;
}

#[tokio::test]
async fn a_task_cancelled_in_the_delay_cascade_is_not_run_when_it_arrives() {
    let names = Names::new("control-delayed");
    let (runs, dropped) = (Runs::default(), Arc::default());
    let worker = TestWorker::start(registry(&runs, &dropped), names.config()).await;
    let publisher = names.publisher().await;
    let delayed = publisher
        .publish(
            "t.count",
            &(),
            &TaskOptions::new().delay(Duration::from_secs(2)),
        )
        .await
        .unwrap()
        .to_string();
    let control = Control::new(publisher.clone(), &names.control);
    control.cancel(&delayed).await.unwrap();
    let events = endings(&names.events, std::slice::from_ref(&delayed)).await;
    assert_eq!(kinds(&events, &delayed), [EventKind::Cancelled]);
    assert_eq!(runs.of(&delayed), 0);
    let report = worker.stop().await;
    assert_eq!(report.totals.retried + report.totals.dead_lettered, 0);
    names.clean_up().await;
}

#[tokio::test]
async fn a_running_handler_is_stopped_by_its_cancel_and_not_retried() {
    let names = Names::new("control-running");
    let (runs, dropped) = (Runs::default(), Arc::new(AtomicBool::new(false)));
    let mut registry = registry(&runs, &dropped);
    // Blocking code polls its cancellation.
    let stopped = Arc::new(AtomicU64::new(0));
    let noticed = stopped.clone();
    let blocking_runs = runs.clone();
    registry.register("t.blocking", move |ctx: TaskContext, _: ()| {
        blocking_runs.record(&ctx);
        let noticed = noticed.clone();
        async move {
            let cancellation = ctx.cancellation.clone();
            tokio::task::spawn_blocking(move || {
                while !cancellation.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                noticed.fetch_add(1, Ordering::SeqCst);
            })
            .await?;
            Ok::<_, TaskError>(())
        }
    });
    let worker = TestWorker::start(registry, names.config()).await;
    let publisher = names.publisher().await;
    let waiting = publisher
        .publish("t.wait", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    let blocking = publisher
        .publish("t.blocking", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    let ids = [waiting.clone(), blocking.clone()];
    read_events(&names.events, |events| {
        ids.iter()
            .all(|id| kinds(events, id).contains(&EventKind::Started))
    })
    .await;
    let control = Control::new(publisher.clone(), &names.control);
    control.cancel(&waiting).await.unwrap();
    control.cancel(&blocking).await.unwrap();
    let events = endings(&names.events, &ids).await;
    for id in &ids {
        assert_eq!(
            kinds(&events, id),
            [EventKind::Started, EventKind::Cancelled]
        );
        assert_eq!(runs.of(id), 1, "run once, not retried");
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the async handler was dropped"
    );
    wait_until(
        Duration::from_secs(10),
        "the blocking code to notice",
        || {
            let stopped = stopped.clone();
            async move { stopped.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    let report = worker.stop().await;
    assert_eq!(report.totals.retried + report.totals.dead_lettered, 0);
    assert_eq!(report.abandoned, 0);
    let conn = raw_connection().await;
    assert_eq!(
        ready_count(&conn, &names.queue).await,
        0,
        "acked, not requeued"
    );
    names.clean_up().await;
}

#[tokio::test]
async fn a_cancel_that_loses_the_race_leaves_the_task_succeeded() {
    let names = Names::new("control-race");
    let (runs, dropped) = (Runs::default(), Arc::default());
    let worker = TestWorker::start(registry(&runs, &dropped), names.config()).await;
    let publisher = names.publisher().await;
    let done = publisher
        .publish("t.count", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    endings(&names.events, std::slice::from_ref(&done)).await;
    Control::new(publisher.clone(), &names.control)
        .cancel(&done)
        .await
        .unwrap();
    // A task published after it, read after the cancel: the worker has applied the cancel
    // by the time it ends.
    let after = publisher
        .publish("t.count", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    let events = endings(&names.events, std::slice::from_ref(&after)).await;
    assert_eq!(kinds(&events, &done), [EventKind::Succeeded]);
    assert_eq!(runs.of(&done), 1);
    worker.stop().await;
    names.clean_up().await;
}

#[tokio::test]
async fn bad_control_input_is_refused_with_a_clear_error() {
    let names = Names::new("control-bad");
    let publisher = names.publisher().await;
    let control = Control::new(publisher.clone(), &names.control);
    assert!(matches!(
        control.cancel("").await,
        Err(ControlError::EmptyId)
    ));
    let missing = format!("{}.missing", names.queue);
    let refused = control.pause(&missing).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!("queue `{missing}` does not exist")
    );

    let cli = |args: &[&str]| {
        let output = std::process::Command::new(binary("warren-producer"))
            .args(args)
            .args(["--control-stream", &names.control])
            .env("AMQP_URL", amqp_url())
            .output()
            .expect("warren-producer runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let (code, stderr) = cli(&["queues", "pause", &missing]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, stderr) = cli(&["tasks", "cancel", ""]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the task id is empty"), "{stderr}");
    // No broker within --connect-timeout: 69, as for the other broker commands.
    let unreachable = std::process::Command::new(binary("warren-producer"))
        .args(["queues", "pause", &names.queue, "--connect-timeout", "1s"])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .expect("warren-producer runs");
    assert_eq!(unreachable.status.code(), Some(69));
    // The same commands succeed on what exists.
    let (code, stderr) = cli(&["queues", "pause", &names.queue]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = cli(&[
        "tasks",
        "cancel",
        "some-id",
        "--server",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    names.clean_up().await;
}
