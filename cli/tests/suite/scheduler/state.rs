//! Where the scheduler keeps each schedule's last tick: a quorum queue `<lease>.tick.<name>`
//! that a restarted scheduler resumes from, and the classic `<lease>.state.<name>` of earlier
//! versions, whose tick the first leader after an upgrade carries over before deleting it.

use super::replica::*;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::{Duration, Instant};
use warren_common::{Topology, TopologyError};
use warren_tests::*;

/// The broker's type of `queue` (`rabbitmqctl list_queues`: exact, unlike its counts), or
/// `None` when there is no such queue.
async fn queue_type(queue: &str) -> Option<String> {
    let list = tokio::process::Command::new("/usr/sbin/rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), list)
        .await
        .expect("rabbitmqctl answers within a minute")
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl list_queues failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let (name, kind) = line.split_once('\t')?;
            (name == queue).then(|| kind.trim().to_owned())
        })
}

/// Whether a passive declare finds no `queue` at all.
async fn is_missing(conn: &lapin::Connection, queue: &str) -> bool {
    matches!(
        Topology::inspect(conn, queue).await,
        Err(TopologyError::NotFound(_))
    )
}

/// The tick recorded in `queue`, read as the scheduler reads it (left in place).
async fn recorded_tick(conn: &lapin::Connection, queue: &str) -> Option<u64> {
    let channel = conn.create_channel().await.expect("channel");
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")?;
    let record: serde_json::Value =
        serde_json::from_slice(&message.delivery.data).expect("a JSON record");
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    message.delivery.acker.nack(requeue).await.expect("nack");
    record["tick_ms"].as_u64()
}

/// Declares the classic state queue exactly as versions before the quorum one did, and
/// records `tick_ms` in it as they did.
async fn write_classic_record(conn: &lapin::Connection, queue: &str, tick_ms: u64) {
    let channel = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    args.insert("x-queue-type".into(), text("classic"));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert("x-overflow".into(), text("drop-head"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, args)
        .await
        .expect("the classic state queue declared");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let body = serde_json::to_vec(&serde_json::json!({ "tick_ms": tick_ms })).unwrap();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "the record was refused");
    assert_eq!(recorded_tick(conn, queue).await, Some(tick_ms));
}

/// Asserts that a leader whose last recorded tick was `last` resumed from it under
/// `run_once`: exactly one catch-up tick for the gap, the latest missed one, right before its
/// first regular tick, and every other tick of the gap counted as missed. `published` are all
/// the ticks in the work queue, `after` what the resuming leader logged, `metrics` its metrics.
fn assert_resumed_from(last: u64, published: &[u64], after: &[(u64, bool)], metrics: &str) {
    let catch_ups: Vec<u64> = after.iter().filter(|(_, c)| *c).map(|(t, _)| *t).collect();
    assert_eq!(catch_ups.len(), 1, "catch-up ticks: {catch_ups:?}");
    let first_regular = after
        .iter()
        .filter(|(_, c)| !c)
        .map(|(t, _)| *t)
        .min()
        .expect("the resuming leader ticked");
    assert_eq!(catch_ups[0], first_regular - 1000);
    let in_gap: Vec<u64> = published
        .iter()
        .copied()
        .filter(|t| *t > last && *t < first_regular)
        .collect();
    assert_eq!(in_gap, catch_ups, "ticks published for the gap");
    let gap_ticks = (first_regular - last) / 1000 - 1;
    assert!(gap_ticks >= 3, "the gap missed only {gap_ticks} ticks");
    let missed = series_value(metrics, MISSED);
    assert_eq!(missed as u64, gap_ticks - 1, "missed ticks counted");
}

/// The sorted ticks of the tasks in the work queue, which must all differ.
async fn published_ticks(conn: &lapin::Connection, queue: &str) -> Vec<u64> {
    let ids = take_ids(conn, queue).await;
    let mut ticks: Vec<u64> = ids.iter().map(|id| tick_of(id)).collect();
    ticks.sort_unstable();
    assert!(
        ticks.windows(2).all(|w| w[0] < w[1]),
        "an id repeats: {ids:?}"
    );
    ticks
}

/// Starts a replica and lets it lead until it has published a tick at least 1.1 s after it
/// became leader (a catch-up tick, if any, and a regular one); returns what it logged as
/// published and its metrics after a clean stop.
async fn lead_briefly(setup: &Setup) -> (Vec<(u64, bool)>, String, Replica) {
    let replica = Replica::start(&setup.file, &setup.lease);
    let led = replica
        .wait_for("became leader", Instant::now(), Duration::from_secs(60))
        .await;
    replica
        .wait_for(
            "tick published",
            led + Duration::from_millis(1100),
            Duration::from_secs(5),
        )
        .await;
    let metrics = replica.metrics().await;
    (replica.ticks(), metrics, replica)
}

#[tokio::test]
async fn state_lives_in_a_quorum_queue_and_a_restart_resumes_from_it() {
    let setup = Setup::new("run_once");
    let conn = raw_connection().await;

    let (before, _, first) = lead_briefly(&setup).await;
    first.stop().await;
    assert!(
        before.iter().all(|(_, catch_up)| !catch_up),
        "nothing to catch up on a first run"
    );
    let last_before = before.iter().map(|(t, _)| *t).max().expect("ticked");
    let state = setup.state_queue();
    assert_eq!(queue_type(&state).await.as_deref(), Some("quorum"));
    assert_eq!(recorded_tick(&conn, &state).await, Some(last_before));
    assert!(
        is_missing(&conn, &setup.classic_state_queue()).await,
        "a classic state queue was declared"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;

    let (after, metrics, second) = lead_briefly(&setup).await;
    second.stop().await;
    let published = published_ticks(&conn, &setup.queue).await;
    assert_eq!(published.len(), before.len() + after.len());
    assert_resumed_from(last_before, &published, &after, &metrics);
    let last_after = after.iter().map(|(t, _)| *t).max().expect("ticked");
    assert_eq!(recorded_tick(&conn, &state).await, Some(last_after));
    setup.delete_queues(&conn).await;
}

#[tokio::test]
async fn an_upgrade_carries_the_last_tick_over_from_the_classic_state_queue() {
    let setup = Setup::new("run_once");
    let conn = raw_connection().await;
    // What an earlier version left behind: its last tick, 5 s ago.
    let recorded = warren_common::now_ms() / 1000 * 1000 - 5000;
    let classic = setup.classic_state_queue();
    write_classic_record(&conn, &classic, recorded).await;

    let (after, metrics, replica) = lead_briefly(&setup).await;
    let carried = replica.find(
        "carried the last tick over",
        Instant::now() - Duration::from_secs(600),
    );
    replica.stop().await;
    assert!(carried.is_some(), "the carry-over was not logged");
    let published = published_ticks(&conn, &setup.queue).await;
    assert_eq!(published.len(), after.len());
    assert_resumed_from(recorded, &published, &after, &metrics);

    assert!(
        is_missing(&conn, &classic).await,
        "the classic state queue outlived the carry-over"
    );
    let state = setup.state_queue();
    assert_eq!(queue_type(&state).await.as_deref(), Some("quorum"));
    let last = published.last().copied();
    assert_eq!(recorded_tick(&conn, &state).await, last);
    setup.delete_queues(&conn).await;
}
