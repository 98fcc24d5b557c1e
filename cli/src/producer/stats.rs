//! `warren-producer stats`: the broker's view of a work queue and its dead letters, and of
//! the delay cascade's `warren.delay.unroutable` (tasks whose delay ended for a queue that no
//! longer exists).

use anyhow::Context;
use std::process::ExitCode;
use warren_common::delay::UNROUTABLE;
use warren_common::{connect, dead_letter_queue_name, Amqp, Shutdown, Topology, TopologyError};

/// Where `stats` sends a user who finds tasks in [`UNROUTABLE`].
const UNROUTABLE_HELP: &str = "they stay there until moved (`dead-letters replay` cannot move \
    them): docs/operations.md, \"Delayed tasks whose queue is gone\", says how to look at them \
    and move them";

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The work queue.
    #[arg(long, env = "WARREN_QUEUE", default_value = "default")]
    queue: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) connect: super::ConnectTimeout,
}

/// What `stats` found in [`UNROUTABLE`], shared by every work queue of the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Unroutable {
    /// The queue holds this many tasks.
    Holding(u32),
    /// No Warren declared the delay cascade here since the queue was introduced: none yet.
    NotDeclared,
    /// The broker cannot say now (e.g. a node that is down, a queue without a leader): why.
    Unreadable(String),
}

impl Unroutable {
    fn from_inspection(inspected: Result<warren_common::QueueState, TopologyError>) -> Self {
        match inspected {
            Ok(state) => Unroutable::Holding(state.ready),
            Err(TopologyError::NotFound(_)) => Unroutable::NotDeclared,
            Err(error) => Unroutable::Unreadable(error.to_string()),
        }
    }

    /// The text lines: the count, and what to do about tasks found there.
    fn lines(&self) -> Vec<String> {
        let subject = "delayed tasks whose queue is gone";
        match self {
            Unroutable::Holding(0) => vec![format!("{subject}: 0 in `{UNROUTABLE}`")],
            Unroutable::Holding(n) => vec![
                format!("{subject}: {n} in `{UNROUTABLE}` (from any queue)"),
                format!("  {UNROUTABLE_HELP}"),
            ],
            Unroutable::NotDeclared => {
                vec![format!("{subject}: 0 (`{UNROUTABLE}` not declared yet)")]
            }
            Unroutable::Unreadable(why) => {
                vec![format!(
                    "{subject}: unknown, `{UNROUTABLE}` cannot be read now: {why}"
                )]
            }
        }
    }

    /// The JSON fields: `delay_unroutable` (a count, null when unknown),
    /// `delay_unroutable_state` and, when unknown, `delay_unroutable_error`.
    fn json_fields(&self, object: &mut serde_json::Map<String, serde_json::Value>) {
        let (count, state) = match self {
            Unroutable::Holding(n) => (serde_json::json!(n), "declared"),
            Unroutable::NotDeclared => (serde_json::json!(0), "not_declared"),
            Unroutable::Unreadable(why) => {
                object.insert("delay_unroutable_error".into(), why.as_str().into());
                (serde_json::Value::Null, "unavailable")
            }
        };
        object.insert("delay_unroutable".into(), count);
        object.insert("delay_unroutable_state".into(), state.into());
    }
}

pub async fn run(args: StatsArgs, amqp: &Amqp, shutdown: &Shutdown) -> anyhow::Result<ExitCode> {
    let connecting = connect(amqp, "warren-producer stats", &shutdown.drain);
    let conn = args.connect.bound(amqp, connecting).await??;
    let work = Topology::inspect(&conn, &args.queue)
        .await
        .context("reading the work queue")?;
    let dlq = dead_letter_queue_name(&args.queue);
    let dead = Topology::inspect(&conn, &dlq)
        .await
        .context("reading the dead-letter queue")?;
    // Only a count beside the queue's: whatever stands in its way is reported, not fatal.
    let unroutable = Unroutable::from_inspection(Topology::inspect(&conn, UNROUTABLE).await);
    let _ = conn.close(200, "bye".into()).await;
    if args.json {
        let mut object = serde_json::Map::new();
        object.insert("queue".into(), args.queue.as_str().into());
        object.insert("ready".into(), work.ready.into());
        object.insert("consumers".into(), work.consumers.into());
        object.insert("dead_letters".into(), dead.ready.into());
        unroutable.json_fields(&mut object);
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!(
            "queue {}: {} ready, {} consumers, {} dead letters",
            args.queue, work.ready, work.consumers, dead.ready
        );
        for line in unroutable.lines() {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(unroutable: &Unroutable) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        unroutable.json_fields(&mut object);
        serde_json::Value::Object(object)
    }

    #[test]
    fn tasks_found_come_with_what_to_do() {
        let lines = Unroutable::Holding(3).lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(&format!("3 in `{UNROUTABLE}`")));
        assert!(lines[1].contains("docs/operations.md"));
        assert_eq!(Unroutable::Holding(0).lines().len(), 1);
        assert_eq!(json(&Unroutable::Holding(3))["delay_unroutable"], 3);
    }

    #[test]
    fn a_queue_not_declared_holds_nothing_and_one_unreadable_says_why() {
        let missing = Unroutable::from_inspection(Err(TopologyError::NotFound(UNROUTABLE.into())));
        assert_eq!(missing, Unroutable::NotDeclared);
        assert!(missing.lines()[0].contains("not declared yet"));
        assert_eq!(json(&missing)["delay_unroutable"], 0);
        assert_eq!(json(&missing)["delay_unroutable_state"], "not_declared");

        let down = Unroutable::from_inspection(Err(TopologyError::Unavailable {
            queue: UNROUTABLE.into(),
            detail: "NOT_FOUND - home node 'rabbit@b' is down or inaccessible".into(),
        }));
        assert!(down.lines()[0].contains("cannot be read now"), "{down:?}");
        assert!(down.lines()[0].contains("home node 'rabbit@b'"));
        let value = json(&down);
        assert!(value["delay_unroutable"].is_null());
        assert_eq!(value["delay_unroutable_state"], "unavailable");
        assert!(value["delay_unroutable_error"]
            .as_str()
            .unwrap()
            .contains("is down"));
    }
}
