//! `published` events against the real broker: the library's publisher, `warren-producer
//! publish` and the HTTP ingest each record one per task with the payload's copy (JSON when
//! it fits, cut at the configured size, none at 0); the index shows such a task `published`
//! with its payload until its run decides it; and a dead letter replayed with
//! `--reset-attempts` (attempt 1 again) shows `published` again, then its new run's ending.

use super::{cli, cli_state, Names, Serve};
use crate::binary;
use crate::events::read_events;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use warren_cli::demo;
use warren_common::events::{EventKind, PublishedEvents, Stamped};
use warren_common::Codec;
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{HandlerOptions, Payload, Registry, TaskContext, TaskError};

/// `warren-producer publish ARGS` to the queue of `names`, recording in its stream: the
/// task's id.
async fn cli_publish(names: &Names, args: &[&str]) -> String {
    let output = tokio::process::Command::new(binary("warren-producer"))
        .args([
            "publish",
            "--queue",
            &names.queue,
            "--events-stream",
            &names.stream,
        ])
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("warren-producer publish runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The `published` events of `ids`, read from the stream once each has one.
async fn published_events(stream: &str, ids: &[&str]) -> BTreeMap<String, Stamped> {
    let is_published = |e: &&Stamped| e.event.event == EventKind::Published;
    let events = read_events(stream, |events| {
        ids.iter().all(|id| {
            events
                .iter()
                .filter(is_published)
                .any(|e| e.event.id == *id)
        })
    })
    .await;
    events
        .into_iter()
        .filter(|e| e.event.event == EventKind::Published)
        .map(|e| (e.event.id.to_string(), e))
        .collect()
}

/// The payload's copy of an event, as the JSON it is written as.
fn payload(event: &Stamped) -> Value {
    serde_json::to_value(&event.event.payload).unwrap()
}

#[tokio::test]
async fn every_publisher_records_published_with_the_payload_copy_cut_at_its_cap() {
    let names = Names::new("status.published");
    let serve = Serve::start_with(
        &names,
        &names.index("index.db"),
        &["--events-payload-bytes", "16"],
    )
    .await;
    let events = |bytes| PublishedEvents::new(names.stream.clone()).payload_bytes(bytes);
    let library = publisher(&names.queue).await.with_events(events(64));
    let private = publisher(&names.queue).await.with_events(events(0));
    let long = "x".repeat(100);
    let json = || TaskOptions::new().codec(Codec::Json);
    let lib_small = library
        .publish("demo.echo", &json!({"ms": 10}), &json())
        .await
        .unwrap();
    let lib_long = library
        .publish("demo.echo", &json!({ "text": long }), &json())
        .await
        .unwrap();
    // Bincode, the library's default codec: not JSON, so base64.
    let lib_binary = library.send(&demo::Sleep { ms: 1 }).await.unwrap();
    let lib_none = private
        .publish("demo.echo", &json!({"secret": 1}), &json())
        .await
        .unwrap();
    library.close().await;
    private.close().await;
    let cli_small = cli_publish(
        &names,
        &["--task", "demo.echo", "--payload", r#"{"a": [1, 2]}"#],
    )
    .await;
    let cli_args = ["--task", "demo.echo", "--payload", "{\"b\": 2}"];
    let cli_none = cli_publish(
        &names,
        &[&cli_args[..], &["--events-payload-bytes", "0"]].concat(),
    )
    .await;
    let client = &serve.client;
    let http = |payload: Value| {
        let body = json!({"task": "demo.echo", "payload": payload});
        async move {
            let answer = client.post_json("/v1/tasks", &body).await;
            assert_eq!(answer.status, 202, "{}", answer.text);
            answer.json["id"].as_str().expect("an id").to_owned()
        }
    };
    let http_small = http(json!([1])).await;
    let http_long = http(json!({ "text": long })).await;

    let ids = [&lib_small, &lib_long, &lib_none, &http_small, &http_long].map(|id| id.to_string());
    let mut wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let binary = &published_events(&names.stream, &[&lib_binary]).await[&lib_binary];
    let copy = payload(binary);
    assert!(
        copy["base64"].is_string() && copy["json"].is_null(),
        "{copy}"
    );
    assert_eq!(binary.event.task, "demo.sleep");
    wanted.extend([cli_small.as_str(), cli_none.as_str()]);
    let seen = published_events(&names.stream, &wanted).await;
    // Each task once, as attempt 1 of its queue.
    for id in &wanted {
        let event = &seen[*id].event;
        assert_eq!(event.task, "demo.echo");
        assert_eq!(event.queue, names.queue.as_str());
        assert_eq!((event.attempt, event.replays), (Some(1), None));
    }
    assert_eq!(
        payload(&seen[&lib_small]),
        json!({"size": 9, "json": {"ms": 10}})
    );
    let cut = payload(&seen[&lib_long]);
    assert_eq!(cut["cut"], true);
    assert_eq!(cut["size"], 111);
    assert_eq!(cut["text"], format!("{{\"text\":\"{}", "x".repeat(55)));
    assert_eq!(payload(&seen[&lib_none]), Value::Null);
    assert_eq!(
        payload(&seen[&cli_small]),
        json!({"size": 11, "json": {"a": [1, 2]}})
    );
    assert_eq!(payload(&seen[&cli_none]), Value::Null);
    assert_eq!(payload(&seen[&http_small]), json!({"size": 3, "json": [1]}));
    let cut = payload(&seen[&http_long]);
    assert_eq!(
        (cut["cut"].clone(), cut["size"].clone()),
        (true.into(), 111.into())
    );
    assert_eq!(cut["text"], "{\"text\":\"xxxxxxx");

    // The index shows them published, with the payload, until a worker runs them.
    serve.wait_for_state(&lib_small, "published").await;
    let status = serve.status(&lib_small).await;
    assert_eq!(status["payload"]["json"], json!({"ms": 10}), "{status}");
    assert!(status["published_at"].is_string(), "{status}");
    assert!(status["started_at"].is_null(), "{status}");
    assert_eq!(cli_state(&serve, &names, &lib_small).await, "published");
    let (code, text) = cli(&serve, &names, &["status", &lib_small]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("payload        {\"ms\":10}\n"), "{text}");
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    let worker = TestWorker::start(registry, config).await;
    for id in wanted.iter().chain([&lib_binary.as_str()]) {
        serve.wait_for_state(id, "succeeded").await;
    }
    let status = serve.status(&lib_small).await;
    assert_eq!(status["payload"]["json"], json!({"ms": 10}), "{status}");
    assert!(status["started_at"].is_string() || status["ended_at"].is_string());
    worker.stop().await;
    serve.stop().await;
    names.clean_up().await;
}

#[tokio::test]
async fn a_replay_with_reset_attempts_is_published_again_then_its_new_run_decides() {
    let names = Names::new("status.replay");
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    // No handler for the task: dead-lettered as unknown_task at once.
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config.clone()).await;
    let events = PublishedEvents::new(names.stream.clone());
    let publisher = publisher(&names.queue).await.with_events(events);
    let id = publisher
        .publish(
            "status.replayed",
            &json!({"n": 1}),
            &TaskOptions::new().codec(Codec::Json),
        )
        .await
        .unwrap();
    publisher.close().await;
    serve.wait_for_state(&id, "dead_lettered").await;
    worker.stop().await;

    let output = tokio::process::Command::new(binary("warren-producer"))
        .args([
            "dead-letters",
            "replay",
            "--queue",
            &names.queue,
            "--id",
            &id,
        ])
        .args(["--reset-attempts", "--events-stream", &names.stream])
        .env("AMQP_URL", amqp_url())
        .output()
        .await
        .expect("warren-producer dead-letters runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("replayed 1 dead letters"), "{stdout}");
    // Attempt 1 again, yet above the dead letter: the replay counts first.
    serve.wait_for_state(&id, "published").await;
    let status = serve.status(&id).await;
    assert_eq!(
        (status["attempt"].clone(), status["replays"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(status["payload"]["json"], json!({"n": 1}), "{status}");

    let mut registry = Registry::new();
    registry.register_raw(
        "status.replayed",
        HandlerOptions::default(),
        |_: TaskContext, _: Payload| async { Ok::<_, TaskError>(()) },
    );
    let worker = TestWorker::start(registry, config).await;
    serve.wait_for_state(&id, "succeeded").await;
    let status = serve.status(&id).await;
    assert_eq!(
        (status["attempt"].clone(), status["replays"].clone()),
        (1.into(), 1.into())
    );
    assert!(status["error"].is_null(), "{status}");
    worker.stop().await;
    serve.stop().await;
    names.clean_up().await;
}
