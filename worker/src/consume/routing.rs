//! Carrying out an [`Outcome`]: a retry is republished (with a confirm) into the delay
//! cascade and a dead letter into the queue's dead-letter queue, each with Warren's headers,
//! and a delivery to run alone into the queue's isolation queue as it came; only then is the
//! original delivery acked. If the republish fails, the delivery is
//! returned to its queue instead, so a task is never lost between the two.

use crate::consume::acks::Settle;
use crate::outcome::{Failure, Outcome};
use crate::Shared;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_common::Publisher;
use warren_common::{
    dead_letter_queue_name, delay, header_u64, headers, headers_without, int_value,
    isolation_queue_name, now_ms, republished, text_value, truncate_reason, DeadLetterRecord,
    Envelope, BROKER_HEADERS,
};

/// Routes the outcome and says how to settle the delivery.
pub(crate) async fn route(
    shared: &Shared,
    publisher: &Publisher,
    queue: &str,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    outcome: &Outcome,
) -> Settle {
    let tag = delivery.delivery_tag;
    let id = envelope.map(|e| e.id.as_str()).unwrap_or("");
    let published = match outcome {
        Outcome::Ack | Outcome::Cancelled => return Settle::Ack(tag),
        Outcome::Retry { after, failure } => {
            let attempt = envelope.map_or(1, |e| e.attempt) + 1;
            let props = retry_properties(&delivery.properties, attempt, failure, *after);
            let key = delay::delay_routing_key(*after, queue);
            tracing::info!(retry_in = ?after, next_attempt = attempt, reason_kind = %failure.kind,
                reason = %failure.reason, "task failed; retrying");
            let exchange = delay::delay_entry_exchange();
            publisher
                .publish_raw(&exchange, &key, &delivery.data, props, id)
                .await
        }
        Outcome::DeadLetter(failure) => {
            let props = dead_letter_properties(shared, queue, delivery, envelope, failure);
            tracing::warn!(reason_kind = %failure.kind, reason = %failure.reason, "task dead-lettered");
            let dlq = dead_letter_queue_name(queue);
            publisher
                .publish_raw("", &dlq, &delivery.data, props, id)
                .await
        }
        Outcome::Isolate { returns } => {
            // The copy starts with no redelivery count: in the isolation queue the count is
            // that of runs alone.
            let props = republished(
                &delivery.properties,
                without_broker_headers(&delivery.properties),
            );
            let isolation = isolation_queue_name(queue);
            tracing::warn!(returns, to = %isolation,
                "task returned to its queue repeatedly without being settled; moving it to run alone");
            publisher
                .publish_raw("", &isolation, &delivery.data, props, id)
                .await
        }
    };
    match published {
        // The copy may run (and crash its worker) as soon as this task's permit is free: the
        // original is acked, and the ack written, before that, or a crash would return the
        // original too and the task would be moved (and crash workers) twice.
        Ok(()) if matches!(outcome, Outcome::Isolate { .. }) => {
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%error, "could not ack a task moved to run alone; it may run twice");
            }
            Settle::Acked(tag)
        }
        Ok(()) => Settle::Ack(tag),
        Err(error) => {
            tracing::error!(%error, "could not move the task; returning it to its queue");
            Settle::Requeue(tag)
        }
    }
}

fn without_broker_headers(props: &BasicProperties) -> FieldTable {
    headers_without(props, &BROKER_HEADERS)
}

fn retry_properties(
    props: &BasicProperties,
    attempt: u32,
    failure: &Failure,
    after: std::time::Duration,
) -> BasicProperties {
    let mut table = without_broker_headers(props);
    let now = now_ms();
    if !table.contains_key(headers::FIRST_FAILURE_MS) {
        table.insert(headers::FIRST_FAILURE_MS.into(), int_value(now));
    }
    table.insert(headers::LAST_FAILURE_MS.into(), int_value(now));
    table.insert(headers::ATTEMPT.into(), int_value(attempt.into()));
    let due = now + delay::delay_seconds(after) * 1000;
    table.insert(headers::NOT_BEFORE_MS.into(), int_value(due));
    let last_error = format!("{}: {}", failure.kind, truncate_reason(&failure.reason));
    table.insert(headers::LAST_ERROR.into(), text_value(&last_error));
    republished(props, table)
}

fn dead_letter_properties(
    shared: &Shared,
    queue: &str,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    failure: &Failure,
) -> BasicProperties {
    let original = without_broker_headers(&delivery.properties);
    let mut table = original.clone();
    let now = now_ms();
    let first = header_u64(&original, headers::FIRST_FAILURE_MS)
        .ok()
        .flatten()
        .unwrap_or(now);
    // Through the delay cascade or the isolation queue the routing key is theirs; the task's
    // own is the queue.
    let routing_key = delivery.routing_key.as_str();
    let moved = routing_key == isolation_queue_name(queue);
    let routing_key = if moved || delay::is_cascade_exchange(delivery.exchange.as_str()) {
        queue
    } else {
        routing_key
    };
    let record = DeadLetterRecord {
        kind: failure.kind.into(),
        reason: failure.reason.clone(),
        attempts: envelope.map_or(1, |e| e.attempt).into(),
        first_failure_ms: Some(first),
        last_failure_ms: Some(now),
        original_queue: Some(queue.to_owned()),
        original_routing_key: Some(routing_key.to_owned()),
        worker: Some(shared.config.worker_id.clone()),
    };
    record.write(&mut table);
    republished(&delivery.properties, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republished_tasks_lose_the_brokers_counters_and_keep_their_replays() {
        let mut table = FieldTable::default();
        table.insert(headers::X_DELIVERY_COUNT.into(), int_value(3));
        table.insert(headers::ATTEMPT.into(), int_value(1));
        table.insert(headers::REPLAYS.into(), int_value(2));
        let props = BasicProperties::default()
            .with_headers(table)
            .with_expiration("1000".into());
        // A move to run alone keeps the replays too: the events of its runs rank by them.
        let isolated = republished(&props, without_broker_headers(&props));
        let isolated = isolated.headers().as_ref().unwrap();
        assert_eq!(header_u64(isolated, headers::REPLAYS).unwrap(), Some(2));
        let failure = Failure::new(crate::outcome::ReasonKind::Error, "x");
        let retried = retry_properties(&props, 2, &failure, std::time::Duration::from_secs(1));
        assert_eq!(retried.expiration(), &None);
        let headers = retried.headers().as_ref().unwrap();
        assert!(!headers.contains_key(headers::X_DELIVERY_COUNT));
        assert_eq!(header_u64(headers, headers::ATTEMPT).unwrap(), Some(2));
        assert!(headers.contains_key(headers::FIRST_FAILURE_MS));
        assert_eq!(header_u64(headers, headers::REPLAYS).unwrap(), Some(2));
        assert_eq!(
            warren_common::header_string(headers, headers::LAST_ERROR).as_deref(),
            Some("error: x")
        );
    }
}
