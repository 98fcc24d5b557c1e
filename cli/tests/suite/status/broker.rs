//! Broker dead letters reach the index: a task returned until the quorum queue's delivery
//! limit dead-letters it gets no worker ending; `warren-producer dead-letters list
//! --events-stream S` records one, which outranks the crashed runs' `started` events.

use super::{cli, Names, Serve};
use crate::binary;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::events::{Event, EventKind, EventLog};
use warren_common::{Codec, QueueKind, QueueSpec};
use warren_producer::TaskOptions;
use warren_tests::*;

#[tokio::test]
async fn a_broker_dead_letter_listed_with_the_events_stream_ends_its_task_in_the_index() {
    let names = Names::new("status.broker");
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let publisher = publisher(&names.queue).await;
    publisher
        .declare(&QueueSpec::new(&names.queue, QueueKind::Quorum))
        .await
        .unwrap();
    let id = "crash-looper";
    let options = TaskOptions {
        id: Some(id.into()),
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    };
    publisher.publish("demo.noop", &(), &options).await.unwrap();

    // Each delivery's run starts and its worker dies (the delivery goes back, its count
    // raised) until the delivery limit dead-letters the task.
    let crashes = EventLog::new(names.stream.clone(), "crashing-worker");
    let stop = CancellationToken::new();
    let sender = {
        let (log, publisher, stop) = (crashes.clone(), publisher.clone(), stop.clone());
        tokio::spawn(async move { log.run(&publisher, &stop).await })
    };
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut runs = 0u64;
    while let Some(got) = channel
        .basic_get(names.queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let mut started = Event::new(EventKind::Started, id, "demo.noop", &names.queue);
        started.attempt = Some(1);
        started.delivery_count = Some(runs);
        crashes.confirmed(crashes.record(&started)).await;
        runs += 1;
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        got.delivery.acker.nack(requeue).await.unwrap();
        assert!(runs < 1000, "the queue has a delivery limit");
    }
    stop.cancel();
    sender.await.unwrap();
    let dlq = format!("{}.dead", names.queue);
    wait_until(Duration::from_secs(30), "the dead letter", || async {
        ready_count(&conn, &dlq).await == 1
    })
    .await;
    serve.wait_for_state(id, "running").await;

    // Listing without the stream records nothing; with it, the ending reaches the index.
    let dead_letters = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(binary("warren-producer"));
        command
            .args(["dead-letters", "list", "--queue", &names.queue])
            .args(extra)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "warn");
        async move { command.output().await.expect("warren-producer runs") }
    };
    let listed = dead_letters(&[]).await;
    assert!(listed.status.success(), "{listed:?}");
    let missing = dead_letters(&["--events-stream", "no.such.stream"]).await;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no events stream"));
    let listed = dead_letters(&["--events-stream", &names.stream]).await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(id));
    let (code, out) = cli(&serve, &names, &["wait", id, "--timeout", "60s"]).await;
    assert_eq!(code, 4, "{out}");
    let status = serve.status(id).await;
    assert_eq!(status["state"], "dead_lettered");
    assert_eq!(status["error"]["kind"], "broker:delivery_limit");
    let reason = status["error"]["reason"].as_str().unwrap();
    assert!(reason.contains("delivery_limit"), "{reason}");
    assert_eq!(status["queue"], names.queue.as_str());
    assert_eq!(status["attempt"], 1);
    assert!(status["worker"]
        .as_str()
        .unwrap()
        .starts_with("dead-letters@"));
    // The dead letter is still there, and listing again changes nothing a user sees.
    assert_eq!(ready_count(&conn, &dlq).await, 1);
    let again = dead_letters(&["--events-stream", &names.stream]).await;
    assert!(again.status.success(), "{again:?}");
    assert_eq!(serve.state(id).await, "dead_lettered");

    serve.stop().await;
    names.clean_up().await;
}
