//! The status API from Rust (`warren_producer::status::StatusClient`, its example) and
//! `warren-producer tasks wait`: the client's typed answers are the server's JSON exactly, and
//! waiting ends with each ending's exit code, or the timeout's.

use super::{cli, Names, Serve, TOKEN};
use crate::example;
use std::time::{Duration, SystemTime};
use warren_cli::demo;
use warren_producer::status::{
    ClientError, Liveness, State, StatusClient, TaskQuery, TaskTimeline,
};
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::Registry;

#[tokio::test]
async fn the_rust_client_and_tasks_wait_report_each_ending() {
    let names = Names::new("status.client");
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    let worker_id = config.worker_id.clone();
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config).await;
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let publisher = publisher(&names.queue).await;
    let options = TaskOptions::new;
    let sleep = publisher.send(&demo::Sleep { ms: 1500 }).await.unwrap();
    let fail = publisher
        .publish("demo.fail", &(), &options().max_attempts(1))
        .await
        .unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    let expired = publisher
        .publish("demo.noop", &(), &options().expires_at(past))
        .await
        .unwrap();
    let [sleep, fail, expired] = [sleep, fail, expired].map(|id| id.to_string());

    // The Rust client waits for the sleeping task, which ends after it asked.
    let client = StatusClient::new(&serve.url, Some(TOKEN.into())).unwrap();
    wait_until(Duration::from_secs(60), "the index to catch up", || async {
        client.task("any").await.unwrap().index.unwrap().caught_up
    })
    .await;
    let metrics = serve.metrics().await;
    assert_eq!(sample(&metrics, "warren_index_caught_up", &[]), 1.0);
    let done = client.wait(&sleep, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, State::Succeeded);
    assert_eq!(done.worker.as_deref(), Some(worker_id.as_str()));
    assert!(done.started_at < done.ended_at, "{done:?}");
    let dead = client.wait(&fail, Duration::from_secs(60)).await.unwrap();
    assert_eq!(dead.state, State::DeadLettered);
    assert_eq!(dead.error.expect("an error").kind, "retries_exhausted");
    // Its answers are the server's JSON, field for field.
    for id in [&sleep, &fail, "no-such-task"] {
        let typed = serde_json::to_value(client.task(id).await.unwrap()).unwrap();
        assert_eq!(typed, serve.status(id).await, "task {id}");
    }
    // Their timelines: the sleeping task's run with its duration, the failing task's one
    // ending (it failed on its handler's first poll: no `started`, so no duration).
    let kinds = |timeline: &TaskTimeline| -> Vec<&'static str> {
        timeline.events.iter().map(|e| e.event.as_str()).collect()
    };
    let slept = client.timeline(&sleep).await.unwrap();
    assert_eq!(kinds(&slept), ["started", "succeeded"], "{slept:?}");
    assert!(slept.events[1].duration_ms >= Some(1_000), "{slept:?}");
    assert_eq!(slept.events[1].worker, worker_id);
    let failed = client.timeline(&fail).await.unwrap();
    assert_eq!(kinds(&failed), ["dead_lettered"], "{failed:?}");
    let ending = &failed.events[0];
    assert_eq!(
        ending.error.as_ref().map(|e| e.kind.as_str()),
        Some("retries_exhausted")
    );
    assert_eq!((ending.attempt, ending.duration_ms), (Some(1), None));
    assert!(client
        .timeline("no-such-task")
        .await
        .unwrap()
        .events
        .is_empty());
    let page = client
        .tasks(
            &TaskQuery::new()
                .queue(&names.queue)
                .state(State::DeadLettered),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [fail.as_str()]);
    assert!(page.index.incomplete_since.is_none());
    let listed = || async {
        let workers = client.workers().await.unwrap().workers;
        workers.into_iter().find(|w| w.id == worker_id)
    };
    wait_until(
        Duration::from_secs(60),
        "the worker's heartbeat",
        || async { listed().await.is_some() },
    )
    .await;
    let me = listed().await.expect("listed");
    assert_eq!(me.status, Liveness::Alive);
    assert_eq!(me.queues, vec![names.queue.clone()]);

    // Its errors say what to do.
    match client
        .wait("no-such-task", Duration::from_millis(300))
        .await
    {
        Err(ClientError::TimedOut { last, .. }) => assert_eq!(last.state, State::Unknown),
        other => panic!("a timeout, not {other:?}"),
    }
    let anonymous = StatusClient::new(&serve.url, None).unwrap();
    match anonymous.task(&sleep).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("a refusal, not {other:?}"),
    }
    let nobody = StatusClient::new("http://127.0.0.1:9", None).unwrap();
    assert!(matches!(
        nobody.task(&sleep).await,
        Err(ClientError::Unreachable { .. })
    ));

    // `tasks wait`: an exit code per ending, 75 for a task that has not ended in time.
    let (code, out) = cli(&serve, &names, &["wait", &sleep]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nstate          succeeded\n"), "{out}");
    let (code, out) = cli(&serve, &names, &["wait", &fail, "--json"]).await;
    assert_eq!(code, 4, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("--json is JSON");
    assert_eq!(json["error"]["kind"], "retries_exhausted");
    let (code, out) = cli(&serve, &names, &["wait", &expired, "--timeout", "60s"]).await;
    assert_eq!(code, 5, "{out}");
    let (code, out) = cli(&serve, &names, &["wait", "no-such-task", "--timeout", "1s"]).await;
    assert_eq!(code, 75, "{out}");
    assert!(
        out.contains("has not ended within 1s: it is unknown"),
        "{out}"
    );

    // The example asks the same server.
    let output = tokio::process::Command::new(example("task_status"))
        .args([&fail, &serve.url])
        .env("WARREN_AUTH_TOKEN", TOKEN)
        .output()
        .await
        .expect("the task_status example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{output:?}");
    assert!(
        stdout.contains(&format!("{fail} is dead_lettered\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{fail} dead-lettered: ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{worker_id} on ")), "{stdout}");

    worker.stop().await;
    serve.stop().await;
    names.clean_up().await;
}
