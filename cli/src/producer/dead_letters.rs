//! `warren-producer dead-letters`: list, replay and purge the dead letters of a work queue.
//! The work is done by [`DeadLetterQueue`]; this module parses flags and prints results.

use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warren_common::events::{PublishedEvents, DEFAULT_PAYLOAD_BYTES};
use warren_common::{Amqp, Shutdown};
use warren_producer::{
    DeadLetter, DeadLetterError, DeadLetterQueue, Filter, Listing, Publisher, PublisherConfig,
    Selection,
};

/// Width of the table when the terminal's is unknown (`COLUMNS` unset).
const DEFAULT_WIDTH: usize = 160;

/// Narrowest the reason column gets, however wide the others are.
const MIN_REASON_WIDTH: usize = 20;

/// Exit code of a refused command (as for a usage error).
const REFUSED: u8 = 2;

/// Arguments of `dead-letters`.
#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// Age limit the dead-letter queues were declared with (as configured on the workers; 0
    /// for none). Dead letters that a command puts back keep the time they had left.
    #[arg(
        long,
        env = "WARREN_DEAD_LETTER_MAX_AGE",
        default_value = "14days",
        value_parser = humantime::parse_duration,
        global = true
    )]
    dead_letter_max_age: Duration,
    /// The workers' events stream (their --events-stream): each dead letter the broker wrote
    /// by itself (a delivery limit) that the command passes over is recorded there as
    /// `dead_lettered`, so the status index shows how the task ended; `replay` also records
    /// each task it publishes again as `published`.
    #[arg(long, env = "WARREN_EVENTS_STREAM", global = true)]
    events_stream: Option<String>,
    #[command(flatten)]
    pub(super) connect: super::ConnectTimeout,
    #[command(subcommand)]
    command: DeadLettersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeadLettersCommand {
    /// Show dead letters, oldest first; they all stay in the queue, in their order.
    List(ListArgs),
    /// Republish dead letters to the queues they came from, to run again.
    Replay(ReplayArgs),
    /// Delete dead letters for good (needs --yes).
    Purge(PurgeArgs),
}

/// The work queue whose dead letters (in `<queue>.dead`) a command acts on.
#[derive(Debug, clap::Args)]
struct QueueArg {
    /// The work queue; its dead letters are in `<queue>.dead`.
    #[arg(long, env = "WARREN_QUEUE")]
    queue: String,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    queue: QueueArg,
    /// Only dead letters of this task name.
    #[arg(long)]
    task: Option<String>,
    /// Only this kind of reason, e.g. unknown_task, retries_exhausted, broker:delivery_limit
    /// (`broker` for everything the broker dead-lettered by itself).
    #[arg(long = "reason", value_name = "KIND")]
    kind: Option<String>,
    /// Show at most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print one JSON object per line, with every field.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "all", "task"])))]
struct ReplayArgs {
    #[command(flatten)]
    queue: QueueArg,
    /// Replay the dead letters with these task ids (repeat the flag or list several).
    #[arg(long = "id", value_name = "ID", num_args = 1..)]
    ids: Vec<String>,
    /// Replay every dead letter.
    #[arg(long)]
    all: bool,
    /// Replay every dead letter of this task name.
    #[arg(long)]
    task: Option<String>,
    /// Run replayed tasks as attempt 1, with their full retry budget again.
    #[arg(long)]
    reset_attempts: bool,
    /// With --events-stream: copy at most this many bytes of each replayed task's payload
    /// into its `published` event; 0 copies none.
    #[arg(long, env = "WARREN_EVENTS_PAYLOAD_BYTES", default_value_t = DEFAULT_PAYLOAD_BYTES)]
    events_payload_bytes: usize,
}

#[derive(Debug, clap::Args)]
struct PurgeArgs {
    #[command(flatten)]
    queue: QueueArg,
    /// Only dead letters whose last failure is at least this old, e.g. 7d, 12h.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Only dead letters of this task name.
    #[arg(long)]
    task: Option<String>,
    /// Only this kind of reason (as for `list --reason`).
    #[arg(long = "reason", value_name = "KIND")]
    kind: Option<String>,
    /// Confirm that the selected dead letters are to be deleted for good.
    #[arg(long)]
    yes: bool,
}

/// Runs `dead-letters`.
pub async fn run(
    args: DeadLettersArgs,
    amqp: &Amqp,
    exchange: &str,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    if let DeadLettersCommand::Purge(purge) = &args.command {
        if !purge.yes {
            eprintln!(
                "error: refusing to purge dead letters of `{}` without --yes: purging deletes \
                 them for good. Check what would go with `warren-producer dead-letters list`, \
                 then add --yes.",
                purge.queue.queue
            );
            return Ok(ExitCode::from(REFUSED));
        }
    }
    let queue = match &args.command {
        DeadLettersCommand::List(a) => &a.queue.queue,
        DeadLettersCommand::Replay(a) => &a.queue.queue,
        DeadLettersCommand::Purge(a) => &a.queue.queue,
    };
    let config = PublisherConfig {
        amqp: amqp.clone(),
        exchange: exchange.to_owned(),
        default_queue: queue.clone(),
        connection_name: "warren-producer dead-letters".to_owned(),
        ..PublisherConfig::default()
    };
    let connecting = Publisher::connect(config, &shutdown.drain);
    let publisher = args.connect.bound(amqp, connecting).await??;
    // A replay publishes tasks again: with the events stream, each is recorded `published`.
    let publisher = match (&args.command, &args.events_stream) {
        (DeadLettersCommand::Replay(a), Some(stream)) => {
            let events = PublishedEvents::new(stream.clone()).payload_bytes(a.events_payload_bytes);
            publisher.with_events(events)
        }
        _ => publisher,
    };
    let opened = open(&publisher, queue, exchange, &args).await;
    let result = match opened {
        Ok(dlq) => match args.command {
            DeadLettersCommand::List(a) => list(&dlq, a).await,
            DeadLettersCommand::Replay(a) => replay(&dlq, a).await,
            DeadLettersCommand::Purge(a) => purge(&dlq, a).await,
        },
        Err(error) => Err(error.into()),
    };
    publisher.close().await;
    result
}

/// The dead-letter queue of `queue`, recording broker dead letters if asked.
async fn open(
    publisher: &Publisher,
    queue: &str,
    exchange: &str,
    args: &DeadLettersArgs,
) -> Result<DeadLetterQueue, DeadLetterError> {
    let dlq = DeadLetterQueue::open(publisher, queue, exchange)
        .await?
        .with_max_age(args.dead_letter_max_age);
    match &args.events_stream {
        Some(stream) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            let source = format!("dead-letters@{host}-{}", std::process::id());
            dlq.record_broker_dead_letters(stream, &source).await
        }
        None => Ok(dlq),
    }
}

async fn list(dlq: &DeadLetterQueue, args: ListArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        task: args.task,
        kind: args.kind,
        older_than: None,
        ids: Vec::new(),
    };
    let listing = dlq.list(&filter, args.limit).await?;
    if args.json {
        for dead in &listing.shown {
            println!("{}", serde_json::to_string(&JsonLine::new(dead))?);
        }
        eprintln!("{}", summary(dlq, &listing));
    } else {
        if !listing.shown.is_empty() {
            print!("{}", table(&listing.shown, terminal_width()));
        }
        println!("{}", summary(dlq, &listing));
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(dlq: &DeadLetterQueue, listing: &Listing) -> String {
    format!(
        "{} shown, {} selected, {} dead letters in `{}`",
        listing.shown.len(),
        listing.matching,
        listing.total,
        dlq.dead_letter_queue()
    )
}

async fn replay(dlq: &DeadLetterQueue, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let selection = if args.all {
        Selection::All
    } else if let Some(task) = args.task {
        Selection::Task(task)
    } else {
        Selection::Ids(args.ids)
    };
    let replayed = match dlq.replay(&selection, args.reset_attempts).await {
        Ok(n) => n,
        Err(error) => {
            if let DeadLetterError::MissingIds { replayed, .. }
            | DeadLetterError::ReplayFailed { replayed, .. } = &error
            {
                println!("replayed {replayed} dead letters to `{}`", dlq.queue());
            }
            return Err(error.into());
        }
    };
    println!("replayed {replayed} dead letters to `{}`", dlq.queue());
    Ok(ExitCode::SUCCESS)
}

async fn purge(dlq: &DeadLetterQueue, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        task: args.task,
        kind: args.kind,
        older_than: args.older_than,
        ids: Vec::new(),
    };
    let deleted = dlq.purge(&filter).await?;
    println!(
        "deleted {deleted} dead letters from `{}`",
        dlq.dead_letter_queue()
    );
    Ok(ExitCode::SUCCESS)
}

/// A dead letter as one JSON line: every field, and the failure times also in RFC 3339.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    dead: &'a DeadLetter,
    first_failure: Option<String>,
    last_failure: Option<String>,
}

impl<'a> JsonLine<'a> {
    fn new(dead: &'a DeadLetter) -> Self {
        let rfc3339 =
            |ms: Option<u64>| ms.map(|ms| humantime::format_rfc3339_millis(at(ms)).to_string());
        JsonLine {
            dead,
            first_failure: rfc3339(dead.record.first_failure_ms),
            last_failure: rfc3339(dead.record.last_failure_ms),
        }
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(DEFAULT_WIDTH)
}

/// The table of `list`: one row per dead letter, the reason cut to fit `width`.
fn table(shown: &[DeadLetter], width: usize) -> String {
    let header = ["ID", "TASK", "KIND", "ATTEMPTS", "LAST FAILURE"];
    let rows: Vec<[String; 6]> = shown.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let used: usize = widths.iter().map(|w| w + 2).sum();
    let reason_width = width.saturating_sub(used).max(MIN_REASON_WIDTH);
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        for (cell, w) in cells.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&cut(cells[5], reason_width));
        out.push('\n');
    };
    line([
        header[0], header[1], header[2], header[3], header[4], "REASON",
    ]);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

fn row(dead: &DeadLetter) -> [String; 6] {
    let dash = || "-".to_owned();
    let reason: String = dead
        .record
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    [
        dead.id.clone().unwrap_or_else(dash),
        dead.task.clone().unwrap_or_else(dash),
        dead.record.kind.to_string(),
        dead.record.attempts.to_string(),
        dead.record.last_failure_ms.map_or_else(dash, |ms| {
            humantime::format_rfc3339_seconds(at(ms)).to_string()
        }),
        reason,
    ]
}

/// `text` cut to at most `width` characters, marking a cut with an ellipsis.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_common::{DeadLetterRecord, ReasonKind};

    fn dead(id: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            id: Some(id.to_owned()),
            task: Some("demo.flaky".to_owned()),
            record: DeadLetterRecord {
                kind: ReasonKind::RetriesExhausted.into(),
                reason: reason.to_owned(),
                attempts: 1,
                first_failure_ms: Some(1_700_000_000_000),
                last_failure_ms: Some(1_700_000_000_000),
                original_queue: None,
                original_routing_key: None,
                worker: None,
            },
            content_type: None,
            payload_bytes: 0,
            payload_preview: String::new(),
            replays: 0,
        }
    }

    #[test]
    fn the_reason_is_cut_to_fit_the_width() {
        let long = "x".repeat(500);
        let out = table(&[dead("a", &long), dead("b", "short\nline")], 100);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].chars().count() <= 100, "{}", lines[1]);
        assert!(lines[1].ends_with('…'));
        assert!(lines[2].ends_with("short line"));
        assert!(lines[1].contains("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn json_lines_carry_every_field_and_readable_times() {
        let value = serde_json::to_value(JsonLine::new(&dead("a", "r"))).unwrap();
        assert_eq!(value["id"], "a");
        assert_eq!(value["kind"], "retries_exhausted");
        assert_eq!(value["last_failure"], "2023-11-14T22:13:20.000Z");
        assert!(value.get("payload_preview").is_some());
        assert!(value.get("original_queue").is_some());
        assert_eq!(
            serde_json::to_string(&JsonLine::new(&dead("a", "r"))).unwrap(),
            r#"{"id":"a","task":"demo.flaky","kind":"retries_exhausted","reason":"r","attempts":1,"first_failure_ms":1700000000000,"last_failure_ms":1700000000000,"original_queue":null,"original_routing_key":null,"worker":null,"content_type":null,"payload_bytes":0,"payload_preview":"","first_failure":"2023-11-14T22:13:20.000Z","last_failure":"2023-11-14T22:13:20.000Z"}"#
        );
    }
}
