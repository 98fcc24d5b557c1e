//! Replaying dead letters: each selected one is republished to the task exchange, routed to
//! the queue it was consumed from, as the task it was (same id, body and properties) without
//! the dead-letter and broker headers. Its dead letter is acked only after the broker
//! confirmed the republish (with the others, when the checkout finishes), so a crash
//! mid-replay duplicates a task at worst and never loses one.

use super::pass::Pass;
use super::properties::replay_properties;
use super::{DeadLetter, DeadLetterError, DeadLetterQueue};
use crate::PublishError;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::message::Delivery;
use std::collections::HashSet;

/// Replays whose confirms are awaited at the same time.
const REPLAY_WINDOW: usize = 64;

/// Which dead letters to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter in the queue.
    All,
    /// The dead letters with these task ids (each id must be present, or replay reports it).
    Ids(Vec<String>),
    /// Every dead letter of this task name.
    Task(String),
    /// Every dead letter the filter selects.
    Matching(super::Filter),
}

impl Selection {
    /// Whether `dead` is selected.
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::Ids(ids) => dead.id.as_ref().is_some_and(|id| ids.contains(id)),
            Selection::Task(task) => dead.task.as_deref() == Some(task.as_str()),
            Selection::Matching(filter) => filter.matches(dead, warren_common::now_ms()),
        }
    }
}

/// Counts of a replay in progress.
#[derive(Default)]
struct Tally {
    replayed: usize,
    failed: usize,
    first_failure: Option<PublishError>,
}

impl Tally {
    /// Records one replay: a replayed dead letter leaves the queue when the checkout
    /// is settled, one that could not be republished stays.
    fn record(&mut self, outcome: (Delivery, Result<(), PublishError>), pass: &mut Pass) {
        match outcome {
            (delivery, Ok(())) => {
                self.replayed += 1;
                pass.delete(delivery);
            }
            (delivery, Err(error)) => {
                self.failed += 1;
                self.first_failure.get_or_insert(error);
                pass.keep(delivery);
            }
        }
    }
}

impl DeadLetterQueue {
    /// Replays the selected dead letters to the queues they came from and returns how many
    /// were replayed. With `reset_attempts` each runs as attempt 1 again; otherwise as the
    /// attempt after the last one made. Dead letters not selected stay, in their order.
    /// Requested ids that are not in the queue are an error, reported after the others
    /// were replayed.
    pub async fn replay(
        &self,
        selection: &Selection,
        reset_attempts: bool,
    ) -> Result<usize, DeadLetterError> {
        let mut pass = Pass::start(
            &self.publisher,
            &self.dlq,
            self.max_age,
            self.events.clone(),
            self.progress.clone(),
        )
        .await?;
        let mut found = HashSet::new();
        let mut tally = Tally::default();
        while pass.next_page().await? {
            let mut inflight = FuturesUnordered::new();
            while let Some(delivery) = pass.take().await? {
                let dead = DeadLetter::from_message(&delivery.properties, &delivery.data);
                if !selection.matches(&dead) {
                    pass.keep(delivery);
                    continue;
                }
                found.extend(dead.id.clone());
                inflight.push(self.replay_one(delivery, dead, reset_attempts));
                if inflight.len() >= REPLAY_WINDOW {
                    if let Some(outcome) = inflight.next().await {
                        tally.record(outcome, &mut pass);
                    }
                }
            }
            // Every replay of the page is settled before the page is.
            while let Some(outcome) = inflight.next().await {
                tally.record(outcome, &mut pass);
            }
        }
        self.replay_result(tally, selection, &found)
    }

    /// Republishes one dead letter as a task, with a confirm.
    async fn replay_one(
        &self,
        delivery: Delivery,
        dead: DeadLetter,
        reset: bool,
    ) -> (Delivery, Result<(), PublishError>) {
        let queue = dead.record.original_queue.as_deref().unwrap_or(&self.queue);
        let props = replay_properties(&delivery.properties, &dead, reset);
        let id = dead.id.as_deref().unwrap_or("");
        let published = self
            .publisher
            .publish_raw(&self.exchange, queue, &delivery.data, props.clone(), id)
            .await;
        if published.is_ok() {
            self.publisher
                .record_published(queue, &delivery.data, &props);
        }
        (delivery, published)
    }

    fn replay_result(
        &self,
        tally: Tally,
        selection: &Selection,
        found: &HashSet<String>,
    ) -> Result<usize, DeadLetterError> {
        if let Some(source) = tally.first_failure {
            return Err(DeadLetterError::ReplayFailed {
                queue: self.dlq.clone(),
                replayed: tally.replayed,
                failed: tally.failed,
                source: Box::new(source),
            });
        }
        let missing = match selection {
            Selection::Ids(ids) => missing_ids(ids, found),
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            return Err(DeadLetterError::MissingIds {
                queue: self.dlq.clone(),
                replayed: tally.replayed,
                missing,
            });
        }
        Ok(tally.replayed)
    }
}

/// The requested ids not found, in the order requested, each once.
fn missing_ids(requested: &[String], found: &HashSet<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    requested
        .iter()
        .filter(|id| !found.contains(*id) && seen.insert(id.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ids_are_named_once_in_the_order_asked() {
        let found: HashSet<String> = ["a".to_owned()].into();
        let asked = ["b", "a", "c", "b"].map(String::from);
        assert_eq!(missing_ids(&asked, &found), ["b", "c"]);
    }
}
