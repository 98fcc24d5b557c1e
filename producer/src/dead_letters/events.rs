//! Broker dead letters into the events stream: a task the broker dead-lettered by itself (a
//! quorum queue's `x-delivery-limit`) never gets a worker's ending, so a dead-letter pass that
//! meets one records a `dead_lettered` event for it (docs/wire-format.md §11.4), ranked after
//! every run of its attempt, and waits for the broker to confirm it before the page that
//! holds the dead letter is settled (a purge or replay then cannot lose the ending).

use super::{DeadLetter, DeadLetterError};
use crate::Publisher;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use warren_common::events::{Event, EventError, EventKind, EventLog, Ticket};
use warren_common::{inspect_queue, TopologyError};

/// The `delivery_count` of a broker dead letter's event: above any run's (a quorum queue
/// dead-letters long before), and the largest integer every JSON reader reads exactly.
pub const BROKER_DEAD_LETTER_DELIVERY_COUNT: u64 = (1 << 53) - 1;

/// How long a page waits for its events to be confirmed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer of broker dead letters' events, shared by the passes of one
/// [`super::DeadLetterQueue`]; its sender stops when the last clone is dropped.
/// The `dead_lettered` event of `dead` (whose kind reads `kind`), if the broker wrote it and
/// it names its task.
fn broker_event<'a>(dead: &'a DeadLetter, kind: &'a str) -> Option<Event<'a>> {
    if !dead.is_from_broker() {
        return None;
    }
    let record = &dead.record;
    Some(Event {
        at_ms: record.last_failure_ms.unwrap_or_else(warren_common::now_ms),
        attempt: Some(u32::try_from(record.attempts).unwrap_or(u32::MAX)),
        delivery_count: Some(BROKER_DEAD_LETTER_DELIVERY_COUNT),
        error: Some(EventError {
            kind: Cow::Borrowed(kind),
            reason: Cow::Borrowed(&record.reason),
        }),
        ..Event::new(
            EventKind::DeadLettered,
            dead.id.as_deref()?,
            dead.task.as_deref().unwrap_or(""),
            record.original_queue.as_deref().unwrap_or(""),
        )
    })
}

#[derive(Clone)]
pub(super) struct BrokerEvents {
    log: EventLog,
    _sender: Arc<DropGuard>,
}

impl BrokerEvents {
    /// Records into `stream` (which must exist: the workers' `--events-stream`) as `source`,
    /// sending through `publisher`.
    pub(super) async fn start(
        publisher: &Publisher,
        stream: &str,
        source: &str,
    ) -> Result<Self, DeadLetterError> {
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        match inspect_queue(&channel, stream).await {
            Err(TopologyError::NotFound(_)) => {
                return Err(DeadLetterError::NoEventsStream(stream.to_owned()))
            }
            Err(e) => {
                return Err(DeadLetterError::queue(
                    "checking the events stream",
                    stream,
                    e,
                ))
            }
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
            }
        }
        let log = EventLog::new(stream, source);
        let stop = CancellationToken::new();
        let (sender, publisher, token) = (log.clone(), publisher.clone(), stop.clone());
        tokio::spawn(async move { sender.run(&publisher, &token).await });
        Ok(BrokerEvents {
            log,
            _sender: Arc::new(stop.drop_guard()),
        })
    }

    /// Records the ending of `dead` if the broker dead-lettered it; the ticket to wait for.
    pub(super) fn record(&self, dead: &DeadLetter) -> Option<Ticket> {
        let kind = dead.record.kind.to_string();
        Some(self.log.record(&broker_event(dead, &kind)?))
    }

    /// Waits until the event of `ticket` (and every one before it) is confirmed.
    pub(super) async fn confirmed(&self, ticket: Ticket) -> Result<(), DeadLetterError> {
        tokio::time::timeout(CONFIRM_TIMEOUT, self.log.confirmed(ticket))
            .await
            .map_err(|_| DeadLetterError::EventsNotRecorded {
                stream: self.log.stream().to_owned(),
                timeout: CONFIRM_TIMEOUT,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, FieldTable};
    use lapin::BasicProperties;
    use warren_common::{headers, int_value, text_value};

    fn dead_letter(headers: FieldTable) -> DeadLetter {
        let props = BasicProperties::default()
            .with_message_id("t-1".into())
            .with_type("demo.crash".into())
            .with_headers(headers);
        DeadLetter::from_message(&props, b"{}")
    }

    #[test]
    fn only_the_brokers_dead_letters_get_an_event_that_outranks_every_run() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), text_value("delivery_limit"));
        death.insert("queue".into(), text_value("work"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut table = FieldTable::default();
        let deaths = FieldArray::from(vec![AMQPValue::FieldTable(death)]);
        table.insert(headers::X_DEATH.into(), AMQPValue::FieldArray(deaths));
        table.insert(headers::ATTEMPT.into(), int_value(2));
        let broker = dead_letter(table);
        let kind = broker.record.kind.to_string();
        let event = broker_event(&broker, &kind).expect("a broker dead letter");
        assert_eq!(event.event, EventKind::DeadLettered);
        assert_eq!(
            (&*event.id, &*event.task, &*event.queue),
            ("t-1", "demo.crash", "work")
        );
        assert_eq!(event.attempt, Some(2));
        assert_eq!(
            event.delivery_count,
            Some(BROKER_DEAD_LETTER_DELIVERY_COUNT)
        );
        let error = event.error.expect("an error");
        assert_eq!(error.kind, "broker:delivery_limit");
        assert!(error.reason.contains("delivery_limit"), "{}", error.reason);

        let mut table = FieldTable::default();
        table.insert(headers::DEAD_KIND.into(), text_value("retries_exhausted"));
        table.insert(headers::DEAD_REASON.into(), text_value("boom"));
        let worker = dead_letter(table);
        let kind = worker.record.kind.to_string();
        assert!(
            broker_event(&worker, &kind).is_none(),
            "the worker recorded it"
        );
    }
}
