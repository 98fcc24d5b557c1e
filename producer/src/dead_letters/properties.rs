//! The properties of a message the dead-letter tools republish: a dead letter put back into
//! its queue (unchanged but for what the broker added, and keeping its remaining retention
//! time), or a dead letter replayed as a task (without its dead-letter record).

use super::DeadLetter;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_common::{headers, int_value, DeadLetterRecord, BROKER_HEADERS, RECORD_HEADERS};

/// Headers the broker adds when it delivers a message; not part of the dead letter.
const ADDED_ON_DELIVERY: [&str; 2] = [headers::X_DELIVERY_COUNT, headers::X_ACQUIRED_COUNT];

/// Headers of the failures before the dead letter, which a replayed task must not carry,
/// besides its dead-letter record ([`RECORD_HEADERS`]) and the broker's [`BROKER_HEADERS`]:
/// it starts afresh.
const FAILURE_HEADERS: [&str; 2] = [headers::LAST_ERROR, headers::NOT_BEFORE_MS];

/// Every header [`replay_properties`] drops.
fn stripped_on_replay() -> impl Iterator<Item = &'static str> {
    RECORD_HEADERS
        .into_iter()
        .chain(FAILURE_HEADERS)
        .chain(BROKER_HEADERS)
}

/// A dead letter as it goes back into its queue. A republished message starts its queue's
/// `x-message-ttl` afresh, so with the queue's retention age `max_age` known, the copy gets
/// an `expiration` of the time it had left (counted from its last failure, when it was
/// dead-lettered): putting it back never makes it live longer.
pub(super) fn put_back_properties(
    props: &BasicProperties,
    max_age: Option<Duration>,
    now_ms: u64,
) -> BasicProperties {
    let headers = without(props, &ADDED_ON_DELIVERY);
    let dead_since = DeadLetterRecord::read(&headers).last_failure_ms;
    let remaining = max_age.zip(dead_since).map(|(age, since)| {
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        // At least 1 ms: an overdue dead letter goes at once, as the broker would have done.
        age_ms.saturating_sub(now_ms.saturating_sub(since)).max(1)
    });
    let copy = copied(props, headers);
    match remaining {
        Some(ms) => copy.with_expiration(ms.to_string().as_str().into()),
        None => copy,
    }
}

/// The properties of a replayed task: the dead letter's own, persistent, without the
/// dead-letter and broker headers and without `expiration` (left by putting back), with
/// the attempt number it runs as (1 with `reset`, else the one after the last one made), and
/// its replays (`x-warren-replays`) counted one more: the replay's events outrank those of
/// the runs before it (docs/wire-format.md §11.6).
pub(super) fn replay_properties(
    props: &BasicProperties,
    dead: &DeadLetter,
    reset: bool,
) -> BasicProperties {
    let stripped: Vec<&str> = stripped_on_replay().collect();
    let mut headers = without(props, &stripped);
    let attempt = if reset {
        1
    } else {
        dead.record.attempts.saturating_add(1)
    };
    headers.insert(headers::ATTEMPT.into(), int_value(attempt));
    let replays = warren_common::replay_count(props).saturating_add(1);
    headers.insert(headers::REPLAYS.into(), int_value(replays.into()));
    copied(props, headers)
}

fn without(props: &BasicProperties, names: &[&str]) -> FieldTable {
    warren_common::headers_without(props, names)
}

fn copied(props: &BasicProperties, headers: FieldTable) -> BasicProperties {
    warren_common::republished(props, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray};
    use warren_common::{header_u64, text_value};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn dead_letter_properties() -> BasicProperties {
        let mut table = FieldTable::default();
        for name in stripped_on_replay() {
            table.insert(name.into(), text_value("x"));
        }
        table.insert(headers::DEAD_ATTEMPTS.into(), int_value(3));
        table.insert(headers::ATTEMPT.into(), int_value(3));
        table.insert(headers::LAST_FAILURE_MS.into(), int_value(10 * DAY_MS));
        table.insert(headers::CREATED_MS.into(), int_value(42));
        table.insert(headers::TRACEPARENT.into(), text_value("00-abc-def-01"));
        let deaths = FieldArray::from(vec![AMQPValue::FieldTable(FieldTable::default())]);
        table.insert(headers::X_DEATH.into(), AMQPValue::FieldArray(deaths));
        BasicProperties::default()
            .with_message_id("id-1".into())
            .with_type("demo.flaky".into())
            .with_user_id("someone-else".into())
            .with_expiration("5000".into())
            .with_priority(3)
            .with_headers(table)
    }

    #[test]
    fn replayed_tasks_lose_the_dead_letter_and_broker_headers() {
        let props = dead_letter_properties();
        let dead = DeadLetter::from_message(&props, b"");
        let replayed = replay_properties(&props, &dead, false);
        let table = replayed.headers().as_ref().unwrap();
        for name in stripped_on_replay() {
            assert!(!table.contains_key(name), "{name} was kept");
        }
        assert_eq!(header_u64(table, headers::ATTEMPT).unwrap(), Some(4));
        assert_eq!(header_u64(table, headers::CREATED_MS).unwrap(), Some(42));
        assert!(table.contains_key(headers::TRACEPARENT));
        assert_eq!(replayed.delivery_mode(), &Some(2));
        assert_eq!(replayed.message_id(), props.message_id());
        assert_eq!(replayed.kind(), props.kind());
        assert_eq!(replayed.priority(), &Some(3));
        assert_eq!((replayed.expiration(), replayed.user_id()), (&None, &None));
    }

    #[test]
    fn reset_attempts_starts_again_at_one() {
        let props = dead_letter_properties();
        let dead = DeadLetter::from_message(&props, b"");
        let replayed = replay_properties(&props, &dead, true);
        let table = replayed.headers().as_ref().unwrap();
        assert_eq!(header_u64(table, headers::ATTEMPT).unwrap(), Some(1));
        assert_eq!(header_u64(table, headers::REPLAYS).unwrap(), Some(1));
        // A second replay counts on.
        let again = replay_properties(&replayed, &dead, true);
        let table = again.headers().as_ref().unwrap();
        assert_eq!(header_u64(table, headers::REPLAYS).unwrap(), Some(2));
    }

    #[test]
    fn put_back_dead_letters_keep_their_record_and_remaining_time() {
        let props = dead_letter_properties();
        let max_age = Some(Duration::from_millis(14 * DAY_MS));
        let back = put_back_properties(&props, max_age, 20 * DAY_MS);
        let table = back.headers().as_ref().unwrap();
        assert!(table.contains_key(headers::DEAD_REASON));
        assert!(table.contains_key(headers::X_DEATH));
        assert!(!table.contains_key(headers::X_DELIVERY_COUNT));
        let four_days = (4 * DAY_MS).to_string();
        assert_eq!(back.expiration().as_ref().unwrap().as_str(), four_days);
        let overdue = put_back_properties(&props, max_age, 30 * DAY_MS);
        assert_eq!(overdue.expiration().as_ref().unwrap().as_str(), "1");
        let forever = put_back_properties(&props, None, 30 * DAY_MS);
        assert_eq!(forever.expiration(), &None);
    }
}
