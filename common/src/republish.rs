//! Republishing a received message (a retry, a dead letter, a replay): which headers the
//! broker added and must not travel on, and which properties a copy keeps.

use crate::headers;
use lapin::types::FieldTable;
use lapin::BasicProperties;

/// Headers the broker adds on delivery or dead-lettering; a republished message starts
/// afresh without them.
pub const BROKER_HEADERS: [&str; 9] = [
    headers::X_DELIVERY_COUNT,
    headers::X_DEATH,
    headers::X_FIRST_DEATH_EXCHANGE,
    headers::X_FIRST_DEATH_QUEUE,
    headers::X_FIRST_DEATH_REASON,
    headers::X_LAST_DEATH_EXCHANGE,
    headers::X_LAST_DEATH_QUEUE,
    headers::X_LAST_DEATH_REASON,
    headers::X_ACQUIRED_COUNT,
];

/// The message's headers without those named.
pub fn headers_without(props: &BasicProperties, names: &[&str]) -> FieldTable {
    let mut table = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.retain(|name, _| !names.contains(&name.as_str()));
    FieldTable::from(table)
}

/// The properties of a copy: the original ones, persistent, with `headers`, and without
/// `expiration` (it would cut a delay short or expire a dead letter), `user_id` (the broker
/// refuses a user id other than the publishing connection's) or the deprecated `cluster_id`.
pub fn republished(props: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(value) = props.$get() {
                out = out.$set(value.clone());
            }
        )*};
    }
    copy!(content_type => with_content_type, content_encoding => with_content_encoding,
        priority => with_priority, correlation_id => with_correlation_id,
        reply_to => with_reply_to, message_id => with_message_id, timestamp => with_timestamp,
        kind => with_type, app_id => with_app_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int_value;

    #[test]
    fn copies_drop_broker_headers_expiration_and_user_id() {
        let mut table = FieldTable::default();
        table.insert(headers::X_DELIVERY_COUNT.into(), int_value(3));
        table.insert(headers::ATTEMPT.into(), int_value(2));
        let props = BasicProperties::default()
            .with_headers(table)
            .with_expiration("1000".into())
            .with_user_id("someone".into())
            .with_message_id("id-1".into());
        let copy = republished(&props, headers_without(&props, &BROKER_HEADERS));
        let table = copy.headers().as_ref().unwrap();
        assert!(!table.contains_key(headers::X_DELIVERY_COUNT));
        assert!(table.contains_key(headers::ATTEMPT));
        assert_eq!((copy.expiration(), copy.user_id()), (&None, &None));
        assert_eq!(copy.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(copy.delivery_mode(), &Some(2));
    }
}
