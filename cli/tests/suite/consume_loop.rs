//! The consume loop against the real broker: a handler fails alike whether it finishes on
//! its first poll (run inline, with no future of its own) or after waiting, handlers
//! registered with `spawn` run on tasks of their own (in parallel, failing like any other),
//! a slow task at the head of the prefetch window does not hold back the acks of the
//! tasks finished behind it, and with the default settings async handlers run many at once
//! while CPU-bound ones never run more at once than there are CPUs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_common::headers;
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{HandlerOptions, Payload, Registry, TaskContext, TaskError, WorkerConfig};

/// Counts handlers running at once, remembering the most seen.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Overlap {
    /// Blocks the thread for `ms` while counted as running, as a computing handler would.
    fn compute(&self, ms: u64) {
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(running, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn computing(name: &str, spawn: bool, overlap: &Arc<Overlap>, registry: &mut Registry) {
    let options = HandlerOptions {
        spawn,
        ..HandlerOptions::default()
    };
    let overlap = overlap.clone();
    registry.register_raw(name, options, move |_: TaskContext, _: Payload| {
        let overlap = overlap.clone();
        async move {
            overlap.compute(150);
            Ok::<_, TaskError>(())
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawned_handlers_run_in_parallel_and_inline_ones_share_their_loop() {
    let queue = unique_queue("spawned");
    let (inline, spawned) = (Arc::new(Overlap::default()), Arc::new(Overlap::default()));
    let mut registry = Registry::new();
    computing("test.inline", false, &inline, &mut registry);
    computing("test.spawned", true, &spawned, &mut registry);
    let worker = TestWorker::start(registry, test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    for task in ["test.inline", "test.spawned"] {
        for _ in 0..4 {
            publisher
                .publish(task, &(), &TaskOptions::default())
                .await
                .unwrap();
        }
        let label = [("task", task)];
        wait_until(Duration::from_secs(20), task, || async {
            worker.metric("warren_tasks_succeeded_total", &label) == 4.0
        })
        .await;
    }
    // Concurrency 4: the spawned handlers ran side by side on the runtime's threads; the
    // inline ones, blocking their consume loop, one after another.
    assert!(
        spawned.most.load(Ordering::SeqCst) >= 2,
        "spawned ran alone"
    );
    assert_eq!(inline.most.load(Ordering::SeqCst), 1);
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 8);
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn an_inline_handler_fails_alike_whether_it_fails_at_once_or_after_waiting() {
    // A handler that does not wait is run to its end as soon as it starts; one that waits is
    // polled on by the consume loop. Both paths must fail, time out and succeed alike.
    handlers_fail_alike("inlinefail", false).await;
}

#[tokio::test]
async fn a_spawned_handler_that_panics_or_overruns_fails_like_an_inline_one() {
    handlers_fail_alike("spawnfail", true).await;
}

async fn handlers_fail_alike(name: &str, spawn: bool) {
    let queue = unique_queue(name);
    let options = HandlerOptions {
        spawn,
        // Far above the 20 ms the handlers wait: a panic's backtrace, captured and printed
        // by the test harness's hook in a debug build on a loaded machine, took ~300 ms once.
        timeout: Some(Duration::from_secs(2)),
        max_attempts: Some(1),
        ..HandlerOptions::default()
    };
    let wait = || tokio::time::sleep(Duration::from_millis(20));
    let mut registry = Registry::new();
    registry
        .register_raw("test.panics", options, |_: TaskContext, _: Payload| async {
            if true {
                panic!("boom at once");
            }
            Ok::<_, TaskError>(())
        })
        .register_raw("test.panics-later", options, move |_, _| async move {
            wait().await;
            if true {
                panic!("boom after waiting");
            }
            Ok::<_, TaskError>(())
        })
        .register_raw("test.refuses", options, |_, _| async {
            Err::<(), _>(TaskError::permanent("no, at once"))
        })
        .register_raw("test.refuses-later", options, move |_, _| async move {
            wait().await;
            Err::<(), _>(TaskError::permanent("no, after waiting"))
        })
        .register_raw("test.hangs", options, |_, _| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, TaskError>(())
        })
        .register_raw("test.succeeds-later", options, move |_, _| async move {
            wait().await;
            Ok::<_, TaskError>(())
        });
    let worker = TestWorker::start(registry, test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    let tasks = [
        "test.panics",
        "test.panics-later",
        "test.refuses",
        "test.refuses-later",
        "test.hangs",
        "test.succeeds-later",
    ];
    for task in tasks {
        publisher
            .publish(task, &(), &TaskOptions::default())
            .await
            .unwrap();
    }
    let conn = raw_connection().await;
    let dlq = warren_common::dead_letter_queue_name(&queue);
    wait_until(Duration::from_secs(20), "five dead letters", || async {
        ready_count(&conn, &dlq).await == 5
    })
    .await;
    let mut kinds: Vec<(String, String)> = take_all(&conn, &dlq)
        .await
        .iter()
        .map(|(props, _)| {
            let task = props.kind().as_ref().unwrap().to_string();
            (task, header(props, headers::DEAD_KIND).unwrap())
        })
        .collect();
    kinds.sort();
    let expected = [
        ("test.hangs", "timeout"),
        ("test.panics", "panic"),
        ("test.panics-later", "panic"),
        ("test.refuses", "permanent"),
        ("test.refuses-later", "permanent"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(task, kind)| (task.to_string(), kind.to_string()))
        .collect();
    assert_eq!(kinds, expected);
    let report = worker.stop().await;
    assert_eq!(report.totals.dead_lettered, 5);
    assert_eq!(report.totals.succeeded, 1);
    assert_eq!(report.abandoned, 0);
    assert_eq!(ready_count(&conn, &queue).await, 0);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_slow_task_does_not_hold_back_the_acks_of_those_finished_behind_it() {
    let queue = unique_queue("slowhead");
    let mut registry = Registry::new();
    let any = HandlerOptions::default();
    registry.register_raw("test.slow", any, |_: TaskContext, _: Payload| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Ok::<_, TaskError>(())
    });
    registry.register_raw("test.fast", any, |_: TaskContext, _: Payload| async {
        Ok::<_, TaskError>(())
    });
    // A window of 8: if the fast tasks' acks waited for the slow one, the broker would stop
    // after 7 of them until it finished.
    let mut config = test_config(&queue);
    config.prefetch = 8;
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    publisher
        .publish("test.slow", &(), &TaskOptions::default())
        .await
        .unwrap();
    for _ in 0..40 {
        publisher
            .publish("test.fast", &(), &TaskOptions::default())
            .await
            .unwrap();
    }
    let fast = [("task", "test.fast")];
    wait_until(Duration::from_secs(3), "40 fast tasks", || async {
        worker.metric("warren_tasks_succeeded_total", &fast) == 40.0
    })
    .await;
    assert_eq!(
        worker.metric("warren_tasks_in_progress", &[]),
        1.0,
        "the slow task is still running"
    );
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 41);
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 0);
    delete_queues(&conn, &queue).await;
}

impl Overlap {
    /// Counts a handler as running until `done` resolves.
    async fn during<T>(&self, done: impl std::future::Future<Output = T>) -> T {
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(running, Ordering::SeqCst);
        let value = done.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_async_handlers_run_many_at_once_and_cpu_bound_ones_one_per_cpu() {
    let queue = unique_queue("cpubound");
    // The stock defaults, on a queue of this test's own.
    let defaults = WorkerConfig::new([queue.as_str()]);
    let mut config = test_config(&queue);
    (config.concurrency, config.cpu_concurrency, config.prefetch) = (
        defaults.concurrency,
        defaults.cpu_concurrency,
        defaults.prefetch,
    );
    let cpus = config.cpu_concurrency;
    // Each CPU-bound handler waits on a blocking thread until `cpus` of them run (so at least
    // that many run at once), then computes a while: a limit that let more through would
    // show in `most`. The async handlers wait until all of them run at once.
    let (cpu_tasks, async_tasks) = (3 * cpus, 48);
    assert!(async_tasks < config.concurrency && async_tasks > cpus);
    let (cpu, io) = (Arc::new(Overlap::default()), Arc::new(Overlap::default()));
    let cpu_gate = Arc::new(std::sync::Barrier::new(cpus));
    let io_gate = Arc::new(tokio::sync::Barrier::new(async_tasks));
    let cpu_bound = HandlerOptions {
        cpu_bound: true,
        ..HandlerOptions::default()
    };
    let mut registry = Registry::new();
    let (counted, gate) = (cpu.clone(), cpu_gate.clone());
    registry.register_raw("test.cpu", cpu_bound, move |_: TaskContext, _: Payload| {
        let (counted, gate) = (counted.clone(), gate.clone());
        async move {
            let work = tokio::task::spawn_blocking(move || {
                gate.wait();
                std::thread::sleep(Duration::from_millis(30));
            });
            counted.during(work).await?;
            Ok::<_, TaskError>(())
        }
    });
    let (counted, gate) = (io.clone(), io_gate.clone());
    registry.register_raw("test.io", HandlerOptions::default(), move |_, _| {
        let (counted, gate) = (counted.clone(), gate.clone());
        async move {
            let all_at_once = tokio::time::timeout(Duration::from_secs(20), gate.wait());
            counted
                .during(all_at_once)
                .await
                .map_err(TaskError::permanent)?;
            Ok::<_, TaskError>(())
        }
    });
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    // The CPU-bound tasks first: those waiting for a CPU permit must not hold up the async
    // ones behind them.
    for (task, count) in [("test.cpu", cpu_tasks), ("test.io", async_tasks)] {
        for _ in 0..count {
            publisher
                .publish(task, &(), &TaskOptions::default())
                .await
                .unwrap();
        }
    }
    wait_until(Duration::from_secs(30), "every task to succeed", || async {
        worker.metric("warren_tasks_succeeded_total", &[("task", "test.cpu")]) == cpu_tasks as f64
            && worker.metric("warren_tasks_succeeded_total", &[("task", "test.io")])
                == async_tasks as f64
    })
    .await;
    assert_eq!(io.most.load(Ordering::SeqCst), async_tasks);
    assert_eq!(cpu.most.load(Ordering::SeqCst), cpus);
    assert_eq!(
        worker.metric("warren_worker_cpu_concurrency", &[]),
        cpus as f64
    );
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, (cpu_tasks + async_tasks) as u64);
    assert_eq!(report.totals.failed, 0);
    delete_queues(&raw_connection().await, &queue).await;
}
