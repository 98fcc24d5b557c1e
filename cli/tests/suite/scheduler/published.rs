//! `warren-scheduler --events-stream`: each tick it publishes records a `published` event
//! with the schedule's payload.

use super::replica::*;
use crate::events::read_events;
use serde_json::json;
use std::time::{Duration, Instant};
use warren_common::events::EventKind;
use warren_tests::*;

#[tokio::test]
async fn each_tick_published_records_a_published_event_with_its_payload() {
    let setup = Setup::new("skip");
    let stream = format!("{}.events", setup.queue);
    let replica = Replica::start_with(
        &setup.file,
        &setup.lease,
        &["--events-stream", &stream, "--events-payload-bytes", "64"],
    );
    let began = Instant::now();
    replica
        .wait_for("tick published", began, Duration::from_secs(30))
        .await;
    // Stopped, it has flushed every event of the ticks it published.
    replica.stop().await;
    let conn = raw_connection().await;
    let ids = take_ids(&conn, &setup.queue).await;
    assert!(!ids.is_empty(), "a tick was published");
    let events = read_events(&stream, |events| {
        ids.iter()
            .all(|id| events.iter().any(|e| e.event.id == *id))
    })
    .await;
    for id in &ids {
        let event = &events.iter().find(|e| e.event.id == *id).unwrap().event;
        assert_eq!(event.event, EventKind::Published);
        assert_eq!(
            (event.task.as_ref(), event.queue.as_ref()),
            ("test.beat", setup.queue.as_str())
        );
        let copy = serde_json::to_value(&event.payload).unwrap();
        assert_eq!(copy["json"], json!({"n": 1}), "{copy}");
    }
    setup.delete_queues(&conn).await;
    let channel = conn.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(stream.as_str().into(), Default::default())
        .await;
}
