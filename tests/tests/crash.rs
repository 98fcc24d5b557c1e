//! A task that kills its worker process comes back again and again; past the crash budget
//! the worker dead-letters it as `crash_loop` instead of running it, and the other tasks run.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;
use warren_common::headers;
use warren_tests::*;

#[tokio::test]
async fn a_task_that_crashes_the_worker_ends_in_the_dead_letters_as_crash_loop() {
    let queue = unique_queue("crash");
    let producer = |args: &[&str]| {
        let mut cmd = Command::new(binary("warren-producer"));
        cmd.arg("publish")
            .args(["--queue", &queue])
            .args(args)
            .env("AMQP_URL", amqp_url());
        cmd
    };
    let out = producer(&["--task", "demo.crash", "--id", "the-crash"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = producer(&["--task", "demo.noop", "--count", "20"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());

    // A supervisor: restart the worker whenever it dies, as systemd or Kubernetes would.
    let mut finished: HashSet<String> = HashSet::new();
    let mut starts = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let conn = raw_connection().await;
    loop {
        assert!(Instant::now() < deadline, "did not settle; {starts} starts");
        starts += 1;
        let mut worker = Command::new(binary("warren-worker"))
            .args(["--queue", &queue, "--prefetch", "1", "--concurrency", "1"])
            .args(["--crash-budget", "2", "--admin-addr", "127.0.0.1:0"])
            .env("AMQP_URL", amqp_url())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = capture_lines(worker.stderr.take().unwrap());
        let done = async {
            loop {
                let dead = ready_count(&conn, &format!("{queue}.dead")).await;
                if dead == 1 && ready_count(&conn, &queue).await == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let crashed = tokio::select! {
            status = worker.wait() => Some(status.unwrap()),
            _ = done => None,
        };
        if crashed.is_none() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::process::Command::new("kill")
                .args(["-TERM", &worker.id().unwrap().to_string()])
                .status()
                .unwrap();
            assert!(worker.wait().await.unwrap().success());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for line in lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("task finished"))
        {
            if let Some(id) = line
                .split("task_id=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            {
                finished.insert(id.to_owned());
            }
        }
        if let Some(status) = crashed {
            assert!(
                !status.success(),
                "only demo.crash stops the worker, by aborting"
            );
            continue;
        }
        break;
    }
    // Budget 2: runs on deliveries 1, 2 and 3 (each crashing), dead-lettered on the 4th.
    assert_eq!(
        starts, 4,
        "three crashes, then a worker that dead-letters it"
    );
    let dead = drain_queue(&conn, &format!("{queue}.dead"), 1, Duration::from_secs(5))
        .await
        .unwrap();
    let props = &dead[0].0;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "the-crash");
    assert_eq!(
        header(props, headers::DEAD_KIND).as_deref(),
        Some("crash_loop")
    );
    assert_eq!(
        header(props, headers::ORIGINAL_QUEUE).as_deref(),
        Some(queue.as_str())
    );
    assert!(header(props, headers::DEAD_REASON)
        .unwrap()
        .contains("crash budget 2"));
    assert_eq!(finished.len(), 20, "every other task ran: {finished:?}");
    delete_queues(&conn, &queue).await;
}
