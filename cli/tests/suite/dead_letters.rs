//! `warren-producer dead-letters` against the real broker, through the real binary: dead
//! letters made by a real worker (and by the broker itself) are listed without losing or
//! reordering any, replayed to run again, and purged with an exact count.

use crate::binary;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::process::Command;
use warren_cli::demo::Flaky;
use warren_common::{headers, int_value, now_ms, text_value, Codec, QueueKind, QueueSpec};
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::Registry;

/// What a run of the CLI printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "the command failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

async fn cli(args: &[&str]) -> Run {
    let output = Command::new(binary("warren-producer"))
        .arg("dead-letters")
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("warren-producer runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `list --json`: one object per dead letter, in queue order.
async fn list_json(queue: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["list", "--queue", queue, "--json"];
    if !extra.contains(&"--limit") {
        args.extend(["--limit", "5000"]);
    }
    args.extend_from_slice(extra);
    let run = cli(&args).await;
    run.assert_ok();
    run.stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

fn ids(listed: &[Value]) -> Vec<String> {
    listed
        .iter()
        .map(|v| {
            v["id"]
                .as_str()
                .expect("every dead letter has an id")
                .to_owned()
        })
        .collect()
}

async fn wait_for_ready(conn: &Connection, queue: &str, want: u32) {
    wait_until(
        Duration::from_secs(30),
        &format!("{want} messages in {queue}"),
        || async move { ready_count(conn, queue).await == want },
    )
    .await;
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged() {
    let queue = unique_queue("dl");
    let dlq = format!("{queue}.dead");
    let mut registry = Registry::new();
    warren_cli::demo::register(&mut registry);
    let mut config = test_config(&queue);
    config.max_attempts = 1;
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    let json = TaskOptions {
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    };
    let mut flaky = Vec::new();
    for _ in 0..5 {
        let payload = Flaky { fail_times: 1 };
        flaky.push(
            publisher
                .publish("demo.flaky", &payload, &json)
                .await
                .unwrap(),
        );
    }
    let mut unknown = Vec::new();
    for n in 0..3 {
        let payload = serde_json::json!({ "n": n });
        unknown.push(
            publisher
                .publish("no.such.task", &payload, &json)
                .await
                .unwrap(),
        );
    }
    let conn = raw_connection().await;
    wait_for_ready(&conn, &dlq, 8).await;

    // Listing shows exactly the 8 dead letters, with the right kinds, and changes nothing.
    let listed = list_json(&queue, &[]).await;
    let kinds: HashMap<String, String> = listed
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 8, "{listed:?}");
    for id in &flaky {
        assert_eq!(kinds.get(id).map(String::as_str), Some("retries_exhausted"));
    }
    for id in &unknown {
        assert_eq!(kinds.get(id).map(String::as_str), Some("unknown_task"));
    }
    for dead in &listed {
        assert_eq!(dead["original_queue"], queue.as_str());
        assert_eq!(dead["attempts"], 1);
        assert!(dead["last_failure"].as_str().unwrap().ends_with('Z'));
        assert!(dead["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let order = ids(&listed);
    assert_eq!(
        ids(&list_json(&queue, &[]).await),
        order,
        "a second listing, same order"
    );
    assert_eq!(ready_count(&conn, &dlq).await, 8, "listing removed nothing");

    // The table and the filters.
    let table = cli(&["list", "--queue", &queue]).await;
    table.assert_ok();
    assert!(
        order.iter().all(|id| table.stdout.contains(id.as_str())),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("8 shown, 8 selected, 8 dead letters"),
        "{}",
        table.stdout
    );
    let only_unknown = list_json(&queue, &["--reason", "unknown_task"]).await;
    let unknown_in_order: Vec<String> = order
        .iter()
        .filter(|id| unknown.contains(id))
        .cloned()
        .collect();
    assert_eq!(ids(&only_unknown), unknown_in_order);
    let two_flaky = list_json(&queue, &["--task", "demo.flaky", "--limit", "2"]).await;
    let flaky_in_order: Vec<String> = order
        .iter()
        .filter(|id| flaky.contains(id))
        .cloned()
        .collect();
    assert_eq!(ids(&two_flaky), flaky_in_order[..2]);

    // Replaying one flaky task runs it again (as attempt 2, which succeeds).
    let succeeded = || {
        worker.metric(
            "warren_tasks_succeeded_total",
            &[("queue", &queue), ("task", "demo.flaky")],
        )
    };
    let first = flaky_in_order[0].as_str();
    let run = cli(&["replay", "--queue", &queue, "--id", first]).await;
    assert!(
        run.assert_ok().stdout.contains("replayed 1 dead letters"),
        "{}",
        run.stdout
    );
    wait_until(
        Duration::from_secs(20),
        "the replayed task to succeed",
        || {
            let n = succeeded();
            async move { n == 1.0 }
        },
    )
    .await;
    let rest: Vec<String> = order.iter().filter(|id| *id != first).cloned().collect();
    assert_eq!(
        ids(&list_json(&queue, &[]).await),
        rest,
        "7 left, in their order"
    );

    // Replaying a task name replays the other four.
    let run = cli(&["replay", "--queue", &queue, "--task", "demo.flaky"]).await;
    assert!(
        run.assert_ok().stdout.contains("replayed 4 dead letters"),
        "{}",
        run.stdout
    );
    wait_until(
        Duration::from_secs(20),
        "the 4 replayed tasks to succeed",
        || {
            let n = succeeded();
            async move { n == 5.0 }
        },
    )
    .await;
    assert_eq!(ids(&list_json(&queue, &[]).await), unknown_in_order);

    // A missing id is an error that names it, and replays nothing.
    let run = cli(&["replay", "--queue", &queue, "--id", "no-such-id"]).await;
    assert_eq!(run.code, Some(1), "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("no-such-id"), "{}", run.stderr);
    assert_eq!(ready_count(&conn, &dlq).await, 3);

    // Purging needs --yes, honours --older-than, and counts exactly.
    let run = cli(&["purge", "--queue", &queue, "--task", "no.such.task"]).await;
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(
        ready_count(&conn, &dlq).await,
        3,
        "a refused purge deletes nothing"
    );
    let run = cli(&["purge", "--queue", &queue, "--older-than", "1h", "--yes"]).await;
    assert!(
        run.assert_ok().stdout.contains("deleted 0 dead letters"),
        "{}",
        run.stdout
    );
    assert_eq!(ready_count(&conn, &dlq).await, 3);
    let run = cli(&[
        "purge",
        "--queue",
        &queue,
        "--task",
        "no.such.task",
        "--yes",
    ])
    .await;
    assert!(
        run.assert_ok().stdout.contains("deleted 3 dead letters"),
        "{}",
        run.stdout
    );
    assert_eq!(ready_count(&conn, &dlq).await, 0);
    assert!(list_json(&queue, &[]).await.is_empty());

    // Each replayed task ran once and none came back.
    let dead_lettered = worker.metric("warren_tasks_dead_lettered_total", &[("queue", &queue)]);
    assert_eq!(dead_lettered, 8.0, "only the 8 original dead letters");
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 5);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_broker_dead_letter_is_shown_and_replayed_clean() {
    let queue = unique_queue("dlbroker");
    let dlq = format!("{queue}.dead");
    let publisher = publisher(&queue).await;
    publisher
        .declare(&QueueSpec::new(&queue, QueueKind::Quorum))
        .await
        .unwrap();
    let options = TaskOptions {
        id: Some("crash-looper".into()),
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    };
    publisher.publish("demo.noop", &(), &options).await.unwrap();
    // Return it until the quorum queue's delivery limit dead-letters it, as repeated worker
    // crashes would.
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    for _ in 0..500 {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap();
        let Some(message) = got else { break };
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        message.delivery.acker.nack(requeue).await.unwrap();
    }
    wait_for_ready(&conn, &dlq, 1).await;

    let listed = list_json(&queue, &[]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let dead = &listed[0];
    assert_eq!(dead["id"], "crash-looper");
    assert_eq!(dead["task"], "demo.noop");
    assert_eq!(dead["kind"], "broker:delivery_limit");
    assert_eq!(dead["original_queue"], queue.as_str());
    assert!(dead["reason"].as_str().unwrap().contains("delivery_limit"));
    assert!(dead["last_failure_ms"].as_u64().is_some());
    assert_eq!(list_json(&queue, &["--reason", "broker"]).await.len(), 1);
    assert!(list_json(&queue, &["--reason", "unknown_task"])
        .await
        .is_empty());

    let run = cli(&["replay", "--queue", &queue, "--all"]).await;
    assert!(
        run.assert_ok().stdout.contains("replayed 1 dead letters"),
        "{}",
        run.stdout
    );
    assert_eq!(ready_count(&conn, &dlq).await, 0);
    wait_for_ready(&conn, &queue, 1).await;
    let back = take_all(&conn, &queue).await;
    assert_eq!(back.len(), 1);
    let (props, _) = &back[0];
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        "crash-looper"
    );
    let table = props.headers().as_ref().unwrap();
    for name in [
        headers::X_DEATH,
        headers::DEAD_KIND,
        headers::X_FIRST_DEATH_REASON,
        headers::X_LAST_DEATH_QUEUE,
    ] {
        assert!(!table.contains_key(name), "{name} was kept: {table:?}");
    }
    // The quorum queue counts deliveries afresh (it writes 0 on a first delivery).
    let deliveries = header(props, headers::X_DELIVERY_COUNT);
    assert!(
        matches!(deliveries.as_deref(), None | Some("0")),
        "{table:?}"
    );
    assert_eq!(header(props, headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(
        props.expiration(),
        &None,
        "no expiration left from putting back"
    );
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn order_and_count_hold_over_several_pages_of_dead_letters() {
    // More than one page (4,096) of the pass.
    const COUNT: usize = 5000;
    let queue = unique_queue("dlorder");
    let dlq = format!("{queue}.dead");
    let publisher = publisher(&queue).await;
    publisher
        .declare(&QueueSpec::new(&queue, QueueKind::Quorum))
        .await
        .unwrap();
    let conn = raw_connection().await;
    publish_dead_letters(&conn, &dlq, COUNT).await;
    let expected: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    for round in 0..2 {
        let listed = list_json(&queue, &[]).await;
        assert_eq!(listed.len(), COUNT, "round {round}");
        let got = ids(&listed);
        let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "round {round}: order changed");
    }
    assert_eq!(ready_count(&conn, &dlq).await, COUNT as u32);

    // Purging every other one keeps the rest in order.
    let run = cli(&["purge", "--queue", &queue, "--task", "even", "--yes"]).await;
    let deleted = format!("deleted {} dead letters", COUNT / 2);
    assert!(run.assert_ok().stdout.contains(&deleted), "{}", run.stdout);
    let odd: Vec<String> = expected.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(ids(&list_json(&queue, &[]).await), odd);
    let run = cli(&["purge", "--queue", &queue, "--yes"]).await;
    assert!(run.assert_ok().stdout.contains(&deleted), "{}", run.stdout);
    assert_eq!(ready_count(&conn, &dlq).await, 0);
    delete_queues(&conn, &queue).await;
}

/// Publishes `count` dead letters `m0`, `m1`, ... straight into `dlq`, tasks `even` and `odd`.
async fn publish_dead_letters(conn: &Connection, dlq: &str, count: usize) {
    let now = now_ms();
    let letters = (0..count).map(|i| {
        let task = if i % 2 == 0 { "even" } else { "odd" };
        dead_letter(&format!("m{i}"), task, now)
    });
    publish_into(conn, dlq, letters).await;
}

/// A dead letter as a worker writes it, dead-lettered at `last_failure_ms`.
fn dead_letter(id: &str, task: &str, last_failure_ms: u64) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(headers::DEAD_KIND.into(), text_value("permanent"));
    table.insert(headers::DEAD_REASON.into(), text_value("made by the test"));
    table.insert(headers::DEAD_ATTEMPTS.into(), int_value(1));
    table.insert(headers::LAST_FAILURE_MS.into(), int_value(last_failure_ms));
    BasicProperties::default()
        .with_message_id(id.into())
        .with_type(task.into())
        .with_delivery_mode(2)
        .with_headers(table)
}

async fn publish_into(
    conn: &Connection,
    queue: &str,
    messages: impl IntoIterator<Item = BasicProperties>,
) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for props in messages {
        let options = BasicPublishOptions::default();
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, b"{}", props)
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = channel.close(200, "published".into()).await;
}

#[tokio::test]
async fn dead_letters_put_back_keep_the_time_they_had_left() {
    let queue = unique_queue("dlage");
    let dlq = format!("{queue}.dead");
    let publisher = publisher(&queue).await;
    // Declared as workers do: the dead letters are kept 14 days.
    publisher
        .declare(&QueueSpec::new(&queue, QueueKind::Quorum))
        .await
        .unwrap();
    let conn = raw_connection().await;
    let fourteen_days = 14 * 24 * 3600 * 1000;
    let almost_expired = now_ms() - fourteen_days + 2_000;
    let letters = [
        dead_letter("almost-expired", "t", almost_expired),
        dead_letter("fresh", "t", now_ms()),
    ];
    publish_into(&conn, &dlq, letters).await;
    assert_eq!(
        ids(&list_json(&queue, &[]).await),
        ["almost-expired", "fresh"]
    );
    // Put back by the listing, the first one has 2 s left, not another 14 days.
    wait_for_ready(&conn, &dlq, 1).await;
    assert_eq!(ids(&list_json(&queue, &[]).await), ["fresh"]);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn wrong_flags_and_missing_queues_are_clear_errors() {
    let queue = unique_queue("dlmissing");
    let run = cli(&["list", "--queue", &queue]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let expected = format!("no dead-letter queue for `{queue}`");
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stderr.contains("is the queue name right?"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("guest:guest"),
        "the password is masked: {}",
        run.stderr
    );

    let run = cli(&["replay", "--queue", &queue]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--all"), "{}", run.stderr);
    let run = cli(&["replay", "--queue", &queue, "--all", "--task", "x"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
    let run = cli(&["purge", "--queue", &queue, "--older-than", "soon", "--yes"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--older-than"), "{}", run.stderr);
}
