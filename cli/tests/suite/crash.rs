//! A task that kills its worker process comes back again and again. Returned twice, it runs
//! alone (from the queue's isolation queue); past the crash budget of runs alone the worker
//! dead-letters it as `crash_loop` instead of running it, and every other task runs, however
//! many deliveries the workers it killed held beside it. The workers are real `warren-worker`
//! processes, started again whenever one dies, as systemd or Kubernetes would.

use crate::WorkerProcess;
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_cli::demo;
use warren_common::{headers, isolation_queue_name, QueueKind, QueueSpec};
use warren_producer::{Publisher, PublisherConfig, TaskOptions};
use warren_tests::*;

/// The crash budget of these tests: tighter than the default, so that a bystander returned
/// with the crashing task three times would be dead-lettered if bystanders were counted.
const BUDGET: &str = "2";

/// Two crashes beside other tasks (returned twice, the task runs alone from then on), three
/// alone (isolation-queue redelivery counts 0, 1 and 2, within the budget of 2), then a
/// worker that dead-letters it: six starts.
const STARTS: usize = 6;

/// What a supervised run came to.
struct Supervised {
    /// Worker processes started.
    starts: usize,
    /// Ids of the tasks that finished successfully, over every process.
    finished: HashSet<String>,
    /// Deliveries moved to the isolation queue, over every process.
    isolated: usize,
}

/// Runs `warren-worker ARGS` against the shared broker, starting it again whenever it dies,
/// until `settled` holds (given the ids finished so far); then stops it with SIGTERM. `Err`
/// with what it came to if that takes a minute.
async fn supervise<F, Fut>(args: &[&str], mut settled: F) -> Result<Supervised, Supervised>
where
    F: FnMut(HashSet<String>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut run = Supervised {
        starts: 0,
        finished: HashSet::new(),
        isolated: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        run.starts += 1;
        let mut worker = WorkerProcess::start(args, &amqp_url()).await;
        let crashed = loop {
            if let Some(status) = worker.child.try_wait().unwrap() {
                break Some(status);
            }
            let mut finished = run.finished.clone();
            finished.extend(worker.finished_ids());
            if settled(finished).await {
                break None;
            }
            if Instant::now() > deadline {
                run.finished.extend(worker.finished_ids());
                return Err(run);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if crashed.is_none() {
            worker.signal("TERM");
            assert!(worker.child.wait().await.unwrap().success());
        }
        // The last lines of a process that died may still be on their way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        run.finished.extend(worker.finished_ids());
        let lines = worker.lines.lock().unwrap();
        run.isolated += lines.iter().filter(|l| l.contains("to run alone")).count();
        match crashed {
            Some(status) => assert!(!status.success(), "only demo.crash stops the worker"),
            None => return Ok(run),
        }
    }
}

/// Publishes `before` valid tasks, the crashing task `the-crash`, then `after` valid tasks
/// (noops and 5 ms sleeps alternately); returns the valid tasks' ids.
async fn publish_around_a_crash(queue: &str, before: usize, after: usize) -> HashSet<String> {
    let publisher = publisher(queue).await;
    publisher
        .declare(&QueueSpec::new(queue, QueueKind::Quorum))
        .await
        .expect("the queue is declared");
    let mut ids = HashSet::new();
    let options = TaskOptions::default();
    for n in 0..before + 1 + after {
        let published = if n == before {
            let crash = TaskOptions {
                id: Some("the-crash".into()),
                ..TaskOptions::default()
            };
            publisher.publish("demo.crash", &(), &crash).await
        } else if n % 2 == 0 {
            publisher.publish("demo.noop", &(), &options).await
        } else {
            let sleep = demo::Sleep { ms: 5 };
            publisher.publish("demo.sleep", &sleep, &options).await
        };
        let id = published.expect("the broker confirms the task");
        if n != before {
            ids.insert(id);
        }
    }
    publisher.close().await;
    ids
}

/// The id and kind of every dead letter in `dlq` (taking them out).
async fn dead_letters(conn: &lapin::Connection, dlq: &str) -> Vec<(String, Option<String>)> {
    take_all(conn, dlq)
        .await
        .iter()
        .map(|(props, _)| {
            let id = props.message_id().as_ref().map(|id| id.to_string());
            (id.unwrap_or_default(), header(props, headers::DEAD_KIND))
        })
        .collect()
}

/// Takes the first dead letter of `dlq` and checks that it is `the-crash`, dead-lettered as
/// `crash_loop` while running alone, with `queue` as its origin.
async fn assert_is_the_crash_loop(conn: &lapin::Connection, dlq: &str, queue: &str) {
    let dead = drain_queue(conn, dlq, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let props = &dead[0].0;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "the-crash");
    assert_eq!(
        header(props, headers::DEAD_KIND).as_deref(),
        Some("crash_loop")
    );
    for name in [headers::ORIGINAL_QUEUE, headers::ORIGINAL_ROUTING_KEY] {
        assert_eq!(header(props, name).as_deref(), Some(queue), "{name}");
    }
    let reason = header(props, headers::DEAD_REASON).unwrap();
    assert!(
        reason.contains("while running alone (crash budget 2)"),
        "{reason}"
    );
}

/// Runs the crashing task among `before + after` valid ones under supervised workers with
/// `args`, and checks that exactly the crashing task was dead-lettered, as `crash_loop`, and
/// that every valid task ran.
async fn only_the_crashing_task_is_dead_lettered(
    label: &str,
    args: &[&str],
    before: usize,
    after: usize,
) {
    let queue = unique_queue(label);
    let dlq = format!("{queue}.dead");
    let isolation = isolation_queue_name(&queue);
    let valid = publish_around_a_crash(&queue, before, after).await;
    let conn = raw_connection().await;
    let mut all_args = vec!["--queue", &queue, "--crash-budget", BUDGET];
    all_args.extend_from_slice(args);
    let run = supervise(&all_args, |finished| {
        let (conn, valid) = (&conn, &valid);
        let (queue, dlq, isolation) = (&queue, &dlq, &isolation);
        async move {
            valid.is_subset(&finished)
                && ready_count(conn, dlq).await == 1
                && ready_count(conn, queue).await == 0
                && ready_count(conn, isolation).await == 0
        }
    })
    .await;
    let run = match run {
        Ok(run) => run,
        Err(run) => panic!(
            "did not settle within a minute: {} starts, {} of {} valid tasks finished; dead letters: {:?}",
            run.starts,
            run.finished.len(),
            valid.len(),
            dead_letters(&conn, &dlq).await
        ),
    };
    eprintln!(
        "{label}: {} starts, {} of {} valid tasks finished, {} deliveries moved to run alone",
        run.starts,
        run.finished.len(),
        valid.len(),
        run.isolated
    );
    assert_eq!(
        run.starts, STARTS,
        "five crashes, then a worker that dead-letters it"
    );
    assert_is_the_crash_loop(&conn, &dlq, &queue).await;
    assert_eq!(ready_count(&conn, &dlq).await, 0, "no other task died");
    assert_eq!(ready_count(&conn, &queue).await, 0);
    assert_eq!(ready_count(&conn, &isolation).await, 0);
    let missing: Vec<_> = valid.difference(&run.finished).collect();
    assert!(
        missing.is_empty(),
        "valid tasks that never ran: {missing:?}"
    );
    assert!(!run.finished.contains("the-crash"));
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_task_that_crashes_the_worker_ends_in_the_dead_letters_as_crash_loop() {
    let args = ["--prefetch", "1", "--concurrency", "1"];
    only_the_crashing_task_is_dead_lettered("crash", &args, 0, 20).await;
}

#[tokio::test]
async fn a_crashing_task_among_300_at_prefetch_8_takes_no_valid_task_with_it() {
    let args = ["--prefetch", "8", "--concurrency", "4"];
    only_the_crashing_task_is_dead_lettered("crash8", &args, 100, 200).await;
}

#[tokio::test]
async fn a_crashing_task_among_300_at_prefetch_32_takes_no_valid_task_with_it() {
    let args = ["--prefetch", "32", "--concurrency", "8"];
    only_the_crashing_task_is_dead_lettered("crash32", &args, 100, 200).await;
}

/// Tasks published for the backlog test: the rate before the restart is measured over 4,500
/// of them, and at least 10,000 must be left when the broker stops.
const BACKLOG: usize = 16_500;

/// The backlog's tasks sleep 10 ms, at concurrency 16: the drain is bounded by the tasks more
/// than by the CPU, so the other processes of a shared machine move the two rates less.
const SLEEP: demo::Sleep = demo::Sleep { ms: 10 };

/// Length of the slices a drain's rate is measured over.
const SLICE: Duration = Duration::from_millis(500);

/// The worker's drain rate (tasks per second) from when its succeeded count reaches `from`
/// until it reaches `to`: the median of its rates over [`SLICE`]s. A median, because on a
/// shared machine another process takes the CPU for a moment now and then; a drain that is
/// slow throughout moves the median all the same.
async fn drain_rate(worker: &WorkerProcess, queue: &str, from: usize, to: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut slices: Vec<f64> = Vec::new();
    let mut mark: Option<(Instant, usize)> = None;
    loop {
        let all = worker.scrape().await;
        let now = Instant::now();
        let done = sample(&all, "warren_tasks_succeeded_total", &[("queue", queue)]) as usize;
        assert!(
            now < deadline,
            "stuck at {done} tasks (waiting for {from}..{to})"
        );
        match mark {
            None if done >= from => mark = Some((now, done)),
            Some((at, first)) if now - at >= SLICE || done >= to => {
                slices.push((done - first) as f64 / (now - at).as_secs_f64());
                mark = Some((now, done));
            }
            _ => {}
        }
        if mark.is_some() && done >= to {
            slices.sort_by(f64::total_cmp);
            return slices[slices.len() / 2];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes [`BACKLOG`] [`SLEEP`] tasks to `queue` on `node`, up to 256 unconfirmed at once; their ids.
async fn publish_backlog(node: &PrivateNode, queue: &str) -> HashSet<String> {
    let config = PublisherConfig {
        amqp: node.url().parse().unwrap(),
        default_queue: queue.to_owned(),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &CancellationToken::new())
        .await
        .unwrap();
    publisher
        .declare(&QueueSpec::new(queue, QueueKind::Quorum))
        .await
        .unwrap();
    let options = TaskOptions::default();
    let ids = futures::stream::iter(0..BACKLOG)
        .map(|_| publisher.publish("demo.sleep", &SLEEP, &options))
        .buffer_unordered(256)
        .map(|published| published.expect("the broker confirms the task"))
        .collect()
        .await;
    publisher.close().await;
    ids
}

#[tokio::test]
async fn after_a_broker_restart_a_backlog_of_10000_drains_at_least_half_as_fast_as_before() {
    let Some(node) = PrivateNode::start_or_skip("backlog") else {
        return;
    };
    let queue = unique_queue("backlog");
    let ids = publish_backlog(&node, &queue).await;
    let args = ["--queue", &queue, "--prefetch", "32", "--concurrency", "16"];
    let worker = WorkerProcess::start(&args, &node.url()).await;
    let before = drain_rate(&worker, &queue, 500, 5_000).await;
    // A clean restart: the deliveries the worker held go back to the queue, counted once.
    node.stop();
    let all = worker.scrape().await;
    let done = sample(&all, "warren_tasks_succeeded_total", &[("queue", &queue)]) as usize;
    assert!(
        BACKLOG - done >= 10_000,
        "only {} tasks left when the broker stopped",
        BACKLOG - done
    );
    node.boot();
    let after = drain_rate(&worker, &queue, done + 1, BACKLOG - 200).await;
    let ratio = after / before;
    eprintln!(
        "backlog of {} at the restart; {before:.0} tasks/s before, {after:.0} after: {ratio:.2}",
        BACKLOG - done
    );
    assert!(
        ratio >= 0.5,
        "the drain after the restart crawled: {ratio:.2} of the rate before"
    );

    wait_until(Duration::from_secs(60), "every task to run", || {
        let finished: HashSet<String> = worker.finished_ids().into_iter().collect();
        let missing = ids.difference(&finished).count();
        async move { missing == 0 }
    })
    .await;
    let all = worker.scrape().await;
    let labels = [("queue", queue.as_str())];
    // A restart returns each held delivery once: none is suspected of crashing its worker.
    assert_eq!(sample(&all, "warren_tasks_isolated_total", &labels), 0.0);
    assert_eq!(
        sample(&all, "warren_tasks_dead_lettered_total", &labels),
        0.0
    );
}
