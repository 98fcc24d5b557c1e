//! What a delivery tells others once it is settled: the event recording its task's
//! transition (docs/wire-format.md §11), and, when the task ended and its message names a
//! `reply_to`, the reply a waiting caller reads (§12). The handler's result goes into both,
//! serialized once, and only when one of them wants it.

use crate::consume::acks::Settle;
use crate::outcome::Failure;
use crate::output::{Carried, Output};
use crate::{Outcome, ReasonKind, Shared};
use lapin::message::Delivery;
use std::borrow::Cow;
use warren_common::events::{Event, EventError, EventKind, RawJson, Ticket};
use warren_common::reply::{Reply, ReplyStatus};
use warren_common::{delay, header_u64, headers, now_ms, replay_count, Claimed, Publisher};

/// Records what settling a delivery says happened to its task (it succeeded, will be retried,
/// or was dead-lettered; a move to run alone, or a return to the queue, ends nothing) and
/// answers the task's caller if it ended. Returns the event's ticket; `None` when no event
/// was recorded.
pub(crate) fn report(
    shared: &Shared,
    publisher: &Publisher,
    queue: &str,
    delivery: &Delivery,
    ran: (&Outcome, Option<Output>),
    settle: Settle,
) -> Option<Ticket> {
    let (outcome, output) = ran;
    if !matches!(settle, Settle::Ack(_)) {
        return None;
    }
    let reply_to = delivery.properties.reply_to().as_ref();
    if shared.events.is_none() && reply_to.is_none() {
        return None;
    }
    let (kind, failure, retry_at) = match outcome {
        Outcome::Ack => (EventKind::Succeeded, None, None),
        Outcome::Retry { after, failure } => {
            let due = now_ms().saturating_add(delay::delay_seconds(*after).saturating_mul(1000));
            (EventKind::Retrying, Some(failure), Some(due))
        }
        Outcome::DeadLetter(failure) if failure.kind == ReasonKind::Expired => {
            (EventKind::Expired, Some(failure), None)
        }
        Outcome::DeadLetter(failure) => (EventKind::DeadLettered, Some(failure), None),
        Outcome::Isolate { .. } => return None,
        Outcome::Cancelled => (EventKind::Cancelled, None, None),
    };
    let carried = output.map(|output| output.to_json(shared.config.max_result_bytes));
    if let Some(reply_to) = reply_to {
        answer(
            publisher,
            delivery,
            reply_to.as_str(),
            kind,
            failure,
            carried.as_ref(),
        );
    }
    let mut event = event(shared, queue, delivery, kind, failure)?;
    event.retry_at_ms = retry_at;
    match &carried {
        Some(Carried::Json(json)) => event.result = Some(RawJson(Cow::Borrowed(&**json))),
        Some(Carried::Refused(why)) => event.result_error = Some(why.as_str().into()),
        Some(Carried::Nothing) | None => {}
    }
    Some(shared.events.as_ref()?.record(&event))
}

/// Records an event of `kind` about `delivery`'s task, if the worker records events and the
/// delivery names a task id (there is nothing to look up otherwise).
pub(crate) fn record_event(
    shared: &Shared,
    queue: &str,
    delivery: &Delivery,
    kind: EventKind,
) -> Option<Ticket> {
    let event = event(shared, queue, delivery, kind, None)?;
    Some(shared.events.as_ref()?.record(&event))
}

/// The event of `kind` about `delivery`'s task, if the worker records events and the
/// delivery names a task id.
fn event<'d>(
    shared: &Shared,
    queue: &'d str,
    delivery: &'d Delivery,
    kind: EventKind,
    failure: Option<&'d Failure>,
) -> Option<Event<'d>> {
    shared.events.as_ref()?;
    let claimed = Claimed::from_properties(&delivery.properties);
    let mut event = Event::new(kind, claimed.id?, claimed.task.unwrap_or(""), queue);
    event.attempt = claimed.attempt;
    // Replays from the dead letters rank first (docs/wire-format.md §11.6).
    let replays = replay_count(&delivery.properties);
    event.replays = (replays > 0).then_some(replays);
    // The broker writes the count from the first return on (quorum queues); a delivery
    // never returned has none. A classic queue's redelivery says only that it came back.
    event.delivery_count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|table| header_u64(table, headers::X_DELIVERY_COUNT).ok().flatten())
        .or((!delivery.redelivered).then_some(0));
    event.error = failure.map(|failure| EventError {
        kind: failure.kind.as_str().into(),
        reason: failure.reason.as_str().into(),
    });
    Some(event)
}

/// Sends the task's caller its reply when the task has ended (a retry is no end: the caller
/// goes on waiting). Best effort, in the background: never mandatory (a reply to a caller that
/// has gone is simply dropped), and neither the ack nor the task's fate waits for it.
fn answer(
    publisher: &Publisher,
    delivery: &Delivery,
    reply_to: &str,
    kind: EventKind,
    failure: Option<&Failure>,
    carried: Option<&Carried>,
) {
    let status = match kind {
        EventKind::Succeeded => ReplyStatus::Succeeded,
        EventKind::DeadLettered => ReplyStatus::DeadLettered,
        EventKind::Expired => ReplyStatus::Expired,
        EventKind::Cancelled => ReplyStatus::Cancelled,
        _ => return,
    };
    let claimed = Claimed::from_properties(&delivery.properties);
    let reply = Reply {
        id: claimed.id.unwrap_or("").into(),
        status,
        result: match carried {
            Some(Carried::Json(json)) => Some(RawJson(Cow::Borrowed(&**json))),
            _ => None,
        },
        result_error: match carried {
            Some(Carried::Refused(why)) => Some(why.as_str().into()),
            _ => None,
        },
        error: failure.map(|failure| EventError {
            kind: failure.kind.as_str().into(),
            reason: failure.reason.as_str().into(),
        }),
    };
    let body = reply.to_bytes();
    let correlation = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string());
    let (publisher, reply_to) = (publisher.clone(), reply_to.to_owned());
    tokio::spawn(async move {
        if let Err(error) = publisher
            .send_reply(&reply_to, correlation.as_deref(), body)
            .await
        {
            tracing::debug!(%error, "could not send the task's reply to its caller");
        }
    });
}
