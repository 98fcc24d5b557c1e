//! Scaling under load with real processes and real signals: workers join, one drains on
//! SIGTERM, one is killed with SIGKILL, a replacement starts — and no task is lost.

use crate::WorkerProcess;
use std::collections::HashMap;
use std::time::Duration;
use warren_cli::demo::Sleep;
use warren_producer::TaskOptions;
use warren_tests::*;

const TASKS: usize = 5000;
const PREFETCH: &str = "20";

fn total_finished(workers: &[&WorkerProcess]) -> usize {
    workers.iter().map(|w| w.finished_ids().len()).sum()
}

async fn until_finished(workers: &[&WorkerProcess], n: usize) {
    wait_until(
        Duration::from_secs(120),
        &format!("{n} tasks finished"),
        || {
            let done = total_finished(workers);
            async move { done >= n }
        },
    )
    .await;
}

#[tokio::test]
async fn workers_join_drain_and_die_under_load_without_losing_a_task() {
    let queue = unique_queue("scale");
    let args = [
        "--queue",
        queue.as_str(),
        "--concurrency",
        "8",
        "--prefetch",
        PREFETCH,
    ];
    let url = amqp_url();
    let a = WorkerProcess::start(&args, &url).await;
    wait_until(Duration::from_secs(20), "ready", || async {
        a.readiness().await == 200
    })
    .await;

    let publisher = publisher(&queue).await;
    let tasks = (0..TASKS).map(|_| {
        (
            "demo.sleep".to_owned(),
            Sleep { ms: 5 },
            TaskOptions::default(),
        )
    });
    let ids: Vec<String> =
        futures::StreamExt::collect::<Vec<_>>(publisher.publish_all(tasks, 1000))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every task confirmed");

    until_finished(&[&a], 300).await;
    let mut b = WorkerProcess::start(&args, &url).await;
    let mut c = WorkerProcess::start(&args, &url).await;
    until_finished(&[&a, &b, &c], 1500).await;
    b.signal("TERM");
    until_finished(&[&a, &b, &c], 2500).await;
    c.signal("KILL");
    let _ = c.child.wait().await;
    let d = WorkerProcess::start(&args, &url).await;

    let conn = raw_connection().await;
    wait_until(Duration::from_secs(120), "every task to run", || {
        let mut seen: std::collections::HashSet<String> = Default::default();
        for w in [&a, &b, &c, &d] {
            seen.extend(w.finished_ids());
        }
        let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
        async move { missing == 0 }
    })
    .await;
    let b_status = tokio::time::timeout(Duration::from_secs(30), b.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        b_status.success(),
        "the SIGTERM'd worker drains and exits 0: {b_status}"
    );
    let b_summary = wait_for_line(&b.lines, "drained", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(field(&b_summary, "abandoned"), Some(0));

    let all = [&a, &b, &c, &d];
    let mut runs: HashMap<String, Vec<char>> = HashMap::new();
    for (worker, name) in all.iter().zip(['a', 'b', 'c', 'd']) {
        for id in worker.finished_ids() {
            runs.entry(id).or_default().push(name);
        }
    }
    assert!(ids.iter().all(|id| runs.contains_key(id)), "no task lost");
    assert_eq!(runs.len(), TASKS, "only published tasks ran");
    let duplicates: Vec<(&String, &Vec<char>)> = runs.iter().filter(|(_, w)| w.len() > 1).collect();
    for (id, by) in &duplicates {
        assert!(
            by.contains(&'c'),
            "task {id} ran twice ({by:?}) without the killed worker being involved"
        );
        assert!(
            !by.contains(&'b') || by.len() == 2 && by.contains(&'c'),
            "{id}: {by:?}"
        );
    }
    // Only the killed worker's unacked deliveries come back: at most its prefetch.
    let prefetch: usize = PREFETCH.parse().unwrap();
    assert!(
        duplicates.len() <= prefetch,
        "{} duplicates, prefetch {prefetch}",
        duplicates.len()
    );
    // The drained worker's tasks ran once: none of b's finished tasks ran again elsewhere
    // unless c, killed, also ran it (then it is c's duplicate).
    let b_twice = b
        .finished_ids()
        .iter()
        .filter(|id| runs[*id].iter().filter(|w| **w != 'c').count() > 1)
        .count();
    assert_eq!(
        b_twice, 0,
        "tasks finished by the SIGTERM'd worker never ran again"
    );
    wait_until(Duration::from_secs(10), "the queue to be empty", || {
        let conn = &conn;
        let queue = &queue;
        async move { ready_count(conn, queue).await == 0 }
    })
    .await;
    eprintln!("duplicates from the killed worker: {}", duplicates.len());
    drop((a, d));
    delete_queues(&conn, &queue).await;
}
