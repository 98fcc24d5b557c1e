//! The control stream itself: a worker consumes nothing until it has read it, and writes
//! snapshots of the state in force.

use super::{endings, registry, Names, Runs};
use std::sync::Arc;
use std::time::Duration;
use warren_common::control::Record;
use warren_common::{Readiness, Shutdown};
use warren_producer::{Control, TaskOptions};
use warren_tests::*;
use warren_worker::Worker;

#[tokio::test]
async fn a_worker_consumes_nothing_until_it_can_read_the_control_stream() {
    let names = Names::new("control-down");
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    // A queue that refuses every publish in the stream's place: the worker cannot write its
    // sync marker, so it cannot know it has read every record.
    let mut refusing = lapin::types::FieldTable::default();
    refusing.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    refusing.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(names.control.as_str().into(), Default::default(), refusing)
        .await
        .unwrap();
    let publisher = names.publisher().await;
    let id = publisher
        .publish("t.count", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    let (runs, dropped) = (Runs::default(), Arc::default());
    let metrics = prometheus::Registry::new();
    let worker = Worker::new(registry(&runs, &dropped), names.config(), &metrics).unwrap();
    let health = worker.health();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let named = format!("the control stream `{}` is unavailable", names.control);
    wait_until(
        Duration::from_secs(30),
        "a 503 naming the control stream",
        || {
            let (health, named) = (health.clone(), named.clone());
            async move {
                health.get() == Readiness::Unavailable
                    && health.detail().is_some_and(|d| d.contains(&named))
            }
        },
    )
    .await;
    assert_eq!(runs.of(&id), 0);
    assert_eq!(
        ready_count(&conn, &names.queue).await,
        1,
        "nothing consumed"
    );

    channel
        .queue_delete(names.control.as_str().into(), Default::default())
        .await
        .unwrap();
    endings(&names.events, std::slice::from_ref(&id)).await;
    assert_eq!(runs.of(&id), 1);
    assert_eq!(health.get(), Readiness::Ready);
    shutdown.drain.cancel();
    running.await.unwrap().unwrap();
    names.clean_up().await;
}

/// Reads the control stream `stream` from its start until a record satisfies `found`.
async fn read_control(stream: &str, found: impl Fn(&Record) -> bool) -> Record {
    use futures::StreamExt;
    use lapin::options::BasicAckOptions;
    let conn = raw_connection().await;
    let mut consumer = consume_stream(&conn, stream, 100).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("the record before the timeout")
            .expect("the consumer is open")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let record = Record::from_body(&delivery.data).expect("a valid control record");
        if found(&record) {
            let _ = conn.close(200, "read".into()).await;
            return record;
        }
    }
}

#[tokio::test]
async fn a_worker_writes_a_snapshot_of_the_state_in_force() {
    let names = Names::new("control-snapshot");
    let publisher = names.publisher().await;
    let control = Control::new(publisher.clone(), &names.control);
    control.pause(&names.queue).await.unwrap();
    let cancel = control.cancel("snapshot-task").await.unwrap();
    // Already expired when read: not carried.
    Control::new(publisher.clone(), &names.control)
        .with_horizon(Duration::ZERO)
        .cancel("expired-task")
        .await
        .unwrap();
    let mut config = names.config();
    config.control_snapshot_interval = Duration::from_secs(1);
    let (runs, dropped) = (Runs::default(), Arc::default());
    let worker = TestWorker::start(registry(&runs, &dropped), config).await;
    let snapshot = read_control(&names.control, |r| matches!(r, Record::Snapshot(_))).await;
    let Record::Snapshot(snapshot) = snapshot else {
        unreachable!("matched above")
    };
    assert_eq!(
        snapshot.cancelled,
        [cancel],
        "only the cancellation in force"
    );
    assert_eq!(snapshot.queues.len(), 1);
    assert_eq!(
        (snapshot.queues[0].queue.as_str(), snapshot.queues[0].paused),
        (names.queue.as_str(), true)
    );
    worker.stop().await;
    names.clean_up().await;
}
