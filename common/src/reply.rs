//! A reply to a caller waiting for a task's end (`Publisher::call`, docs/wire-format.md §12):
//! what a worker sends to the queue a task's `reply_to` names once the task has ended, read
//! back by the caller. One JSON object; the worker sends it best effort, so a caller that is
//! gone costs nothing and the task's ack never waits for it.

use crate::events::{EventError, RawJson};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Content type of a reply.
pub const REPLY_CONTENT_TYPE: &str = "application/json";

/// How a task ended, as a reply says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Its handler succeeded; `result` holds what it returned, if anything.
    Succeeded,
    /// It was dead-lettered; `error` says why.
    DeadLettered,
    /// Its expiry passed before it could run.
    Expired,
    /// It was cancelled through the control stream.
    Cancelled,
}

impl ReplyStatus {
    /// The name written in a reply.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Succeeded => "succeeded",
            ReplyStatus::DeadLettered => "dead_lettered",
            ReplyStatus::Expired => "expired",
            ReplyStatus::Cancelled => "cancelled",
        }
    }
}

/// A reply: the body of the message a worker sends back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply<'a> {
    /// The task's id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// How it ended.
    pub status: ReplyStatus,
    /// What its handler returned (`succeeded`; absent when it returned nothing, or when the
    /// result could not be carried: then `result_error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RawJson<'a>>,
    /// Why a result was left out (larger than the worker's limit, or not serializable).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<Cow<'a, str>>,
    /// Why it failed (`dead_lettered`, `expired`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError<'a>>,
}

impl<'a> Reply<'a> {
    /// The reply as the body of a message.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and raw JSON always serializes.
        serde_json::to_vec(self).expect("a reply serializes")
    }

    /// Reads a reply's body.
    pub fn from_bytes(body: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }

    /// The same reply owning its strings.
    pub fn into_owned(self) -> Reply<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        Reply {
            id: own(self.id),
            status: self.status,
            result: self.result.map(RawJson::into_owned),
            result_error: self.result_error.map(own),
            error: self.error.map(|e| EventError {
                kind: own(e.kind),
                reason: own(e.reason),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn replies_round_trip() {
        let raw = RawValue::from_string("{\"size\":3}".to_owned()).unwrap();
        let reply = Reply {
            id: "t-1".into(),
            status: ReplyStatus::Succeeded,
            result: Some(RawJson(Cow::Borrowed(&raw))),
            result_error: None,
            error: None,
        };
        let bytes = reply.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"id":"t-1","status":"succeeded","result":{"size":3}}"#
        );
        assert_eq!(Reply::from_bytes(&bytes).unwrap(), reply);
        let failed = Reply {
            id: "t-2".into(),
            status: ReplyStatus::DeadLettered,
            result: None,
            result_error: None,
            error: Some(EventError {
                kind: "permanent".into(),
                reason: "no such image".into(),
            }),
        };
        assert_eq!(Reply::from_bytes(&failed.to_bytes()).unwrap(), failed);
    }
}
