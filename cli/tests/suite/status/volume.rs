//! Many tasks through the whole path: 20,000 tasks (`WARREN_TEST_VOLUME_TASKS` to change it)
//! across three stock `warren-worker`s recording events, followed by `serve --index`. While
//! they run, no sampled task's state goes backwards and the succeeded count never falls; at
//! the end every id is `succeeded` in the index, exactly once, and the workers ran each task
//! exactly once. A second index built from the stream's start says it has caught up only
//! once it holds every one of them.

use super::workers::worker;
use super::{Names, Serve};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use warren_producer::TaskOptions;
use warren_tests::*;

/// Tasks published unless `WARREN_TEST_VOLUME_TASKS` says otherwise.
const DEFAULT_TASKS: usize = 20_000;
/// Publishes awaiting their confirms at once.
const PUBLISH_WINDOW: usize = 500;
/// Tasks whose every state seen is checked for going backwards.
const SAMPLED: usize = 100;

/// The order states move in for a task that succeeds at once: `lost` only if a worker were
/// found gone, which none is here (it would rank as `running`).
fn rank(state: &str) -> u8 {
    match state {
        "unknown" => 0,
        "running" | "lost" => 1,
        "succeeded" => 2,
        other => panic!("a task that cannot fail is {other}"),
    }
}

#[tokio::test]
async fn thousands_of_tasks_across_three_workers_all_end_succeeded_and_never_go_back() {
    let tasks = std::env::var("WARREN_TEST_VOLUME_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_TASKS);
    let names = Names::new("status.volume");
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let mut workers = Vec::new();
    for n in 0..3 {
        workers.push(worker(&names, &format!("{}-w{n}", names.queue)).await);
    }
    let publisher = publisher(&names.queue).await;
    let ids: Vec<String> = stream::iter(0..tasks)
        .map(|_| async {
            let id = publisher
                .publish("demo.noop", &(), &TaskOptions::new())
                .await?;
            Ok::<_, warren_producer::PublishError>(id.to_string())
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .try_collect()
        .await
        .expect("every task is confirmed");
    let sampled: Vec<&String> = ids.iter().step_by((tasks / SAMPLED).max(1)).collect();

    // While the workers run: each sampled task only moves forward, and so does the count.
    let mut seen: HashMap<&str, u8> = HashMap::new();
    let mut succeeded = 0.0;
    let succeeded_count = |metrics: &std::collections::BTreeMap<String, f64>| {
        let labels = [("queue", names.queue.as_str()), ("state", "succeeded")];
        sample(metrics, "warren_index_tasks", &labels)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        for id in &sampled {
            let state = rank(&serve.state(id).await);
            let before = seen.insert(id.as_str(), state).unwrap_or(0);
            assert!(
                state >= before,
                "task {id} went back from {before} to {state}"
            );
        }
        let now = succeeded_count(&serve.metrics().await);
        assert!(
            now >= succeeded,
            "the succeeded count fell from {succeeded} to {now}"
        );
        succeeded = now;
        if now == tasks as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {now} of {tasks} tasks succeeded in the index within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every id succeeded, once; nothing else is in the index for the queue.
    let listed = serve
        .list_ids(&format!("queue={}&state=succeeded&limit=1000", names.queue))
        .await;
    assert_eq!(listed.len(), tasks, "each task listed once");
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(listed, ids.iter().cloned().collect::<BTreeSet<_>>());
    let metrics = serve.metrics().await;
    let count = |state| {
        let labels = [("queue", names.queue.as_str()), ("state", state)];
        sample(&metrics, "warren_index_tasks", &labels)
    };
    assert_eq!(count("running") + count("lost") + count("retrying"), 0.0);
    let mut ran = 0.0;
    for worker in &workers {
        let scraped = worker.scrape().await;
        ran += sample(&scraped, "warren_tasks_succeeded_total", &[]);
    }
    assert_eq!(ran, tasks as f64, "each task ran exactly once");
    assert!(
        metrics.contains_key("warren_index_lag_seconds"),
        "the lag is reported"
    );
    // Caught up is said once the index has found where the stream ended when it started
    // (reading its last chunks for up to 5 s) and applied that far: on a fast run, that can
    // come after every task is in.
    wait_until(
        Duration::from_secs(30),
        "the index to say it caught up",
        || async { sample(&serve.metrics().await, "warren_index_caught_up", &[]) == 1.0 },
    )
    .await;

    // A new index reads the whole backlog: once it says it caught up, it has every task.
    let rebuilt = Serve::start(&names, &names.index("rebuilt.db")).await;
    let caught_up = || async {
        let answer = rebuilt.status("any").await;
        answer["index"]["caught_up"] == true
    };
    wait_until(
        Duration::from_secs(120),
        "the new index to catch up",
        caught_up,
    )
    .await;
    let listed = rebuilt
        .list_ids(&format!("queue={}&state=succeeded&limit=1000", names.queue))
        .await;
    assert_eq!(listed.len(), tasks, "caught up means every task is in");
    rebuilt.stop().await;

    for mut worker in workers {
        worker.signal("TERM");
        let _ = worker.child.wait().await;
    }
    serve.stop().await;
    names.clean_up().await;
}
