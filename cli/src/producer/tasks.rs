//! `warren-producer tasks status|list|wait`: what became of tasks, asked of a
//! `warren-producer serve` that keeps a status index (`GET /v1/tasks/{id}` and
//! `GET /v1/tasks`, see docs/openapi.yaml) through the library's `StatusClient`. Text for
//! people, or the server's JSON answer with `--json`. `tasks cancel` writes to the control stream
//! instead (`super::control`).

use super::wait::{self, WaitArgs};
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use warren_common::process::exit;
use warren_producer::status::{ClientError, State, StatusClient, TaskQuery, Timestamp};

/// Where `serve` listens unless told otherwise (its default `--listen` port).
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Which server to ask and how to print its answers (`tasks` and `workers`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The `warren-producer serve` to ask (http:// only); it must run with --index.
    #[arg(long, env = "WARREN_SERVER", default_value = DEFAULT_SERVER, global = true)]
    server: String,
    /// File holding the bearer token the server requires (its --auth-token-file).
    #[arg(long, env = "WARREN_AUTH_TOKEN_FILE", global = true)]
    auth_token_file: Option<PathBuf>,
    /// Print the server's JSON answer instead of text.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

/// Arguments of `tasks`.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TasksCommand {
    /// Show a task's status: published (queued, not started), running, lost (its worker is
    /// gone), retrying, succeeded, dead_lettered, expired, or unknown (no event of it has
    /// reached the server's index); with its payload's copy, if its publisher recorded one.
    Status(StatusArgs),
    /// List tasks, newest change first.
    List(ListArgs),
    /// Wait for a task to end and show its final status. Exit codes: 0 succeeded,
    /// 4 dead-lettered, 5 expired, 6 ended otherwise, 75 not ended within --timeout.
    Wait(WaitArgs),
    /// Cancel a task: written to the control stream over AMQP (not through the server);
    /// workers following it do not run the task, or stop its handler. Says so when the
    /// server's index shows the task had already ended.
    Cancel(super::control::CancelArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The task's id.
    id: String,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only tasks in this state.
    #[arg(long, value_parser = ["published", "running", "lost", "retrying", "succeeded", "dead_lettered", "expired", "cancelled"])]
    state: Option<String>,
    /// Only tasks of this name.
    #[arg(long)]
    task: Option<String>,
    /// Only tasks of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only tasks whose status changed at or after this RFC 3339 time (2026-12-01T09:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Most tasks shown (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Continue a listing where an earlier one stopped (the cursor it printed).
    #[arg(long)]
    cursor: Option<String>,
}

/// Asks the server and prints its answer. Exit codes: 0 answered (an unknown task
/// included), 1 the server refused the request, 69 the server could not be reached; `wait`
/// has its own (see [`wait::run`]).
pub async fn run(
    args: TasksArgs,
    amqp: &warren_common::Amqp,
    shutdown: &warren_common::Shutdown,
) -> anyhow::Result<ExitCode> {
    if let TasksCommand::Cancel(cancel) = args.command {
        return super::control::cancel(cancel, &args.server, amqp, shutdown).await;
    }
    let client = client(&args.server)?;
    let json = match &args.command {
        TasksCommand::Status(status) => answered(client.task(&status.id).await)?,
        TasksCommand::List(list) => answered(client.tasks(&list.query()?).await)?,
        TasksCommand::Wait(wait) => return wait::run(&client, wait, args.server.json).await,
        TasksCommand::Cancel(_) => unreachable!("answered above"),
    };
    let json = match json {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.server.json {
        println!("{json}");
    } else {
        match args.command {
            TasksCommand::Status(_) => print!("{}", status_text(&json)),
            _ => print!("{}", list_text(&json)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The ending the server's index shows for task `id` (`succeeded`, `dead_lettered`,
/// `expired`), if the server answers and shows one: a cancel made now lost the race.
pub(super) async fn ended_state(args: &ServerArgs, id: &str) -> Option<State> {
    let status = client(args).ok()?.task(id).await.ok()?;
    (status.state.is_ended() && status.state != State::Cancelled).then_some(status.state)
}

/// The client of the server `args` names.
pub(super) fn client(args: &ServerArgs) -> anyhow::Result<StatusClient> {
    let token = match &args.auth_token_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--auth-token-file {}: cannot read", path.display()))?
                .trim()
                .to_owned(),
        ),
    };
    StatusClient::new(&args.server, token).context("--server")
}

/// An answer as JSON (as the server wrote it), or the exit code of a failure, its message
/// printed: 69 the server could not be reached, 1 it refused or is not a status API.
pub(super) fn answered<T: Serialize>(
    answer: Result<T, ClientError>,
) -> anyhow::Result<Result<Value, ExitCode>> {
    match answer {
        Ok(answer) => Ok(Ok(serde_json::to_value(answer)?)),
        Err(error) => Ok(Err(failed(&error))),
    }
}

/// Prints why the server gave no answer; its exit code.
pub(super) fn failed(error: &ClientError) -> ExitCode {
    match error {
        ClientError::Unreachable { .. } => {
            eprintln!("error: cannot reach the server: {error}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        _ => {
            eprintln!("error: {error}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

impl ListArgs {
    fn query(&self) -> anyhow::Result<TaskQuery> {
        let mut query = TaskQuery::new().limit(self.limit);
        if let Some(state) = &self.state {
            query = query.state(State::parse(state).context("--state")?);
        }
        if let Some(task) = &self.task {
            query = query.task(task);
        }
        if let Some(queue) = &self.queue {
            query = query.queue(queue);
        }
        if let Some(since) = &self.since {
            let time = chrono::DateTime::parse_from_rfc3339(since)
                .with_context(|| format!("--since `{since}`: not an RFC 3339 time with a zone"))?;
            let ms = u64::try_from(time.timestamp_millis()).context("--since: before 1970")?;
            query = query.since(Timestamp::from_millis(ms));
        }
        if let Some(cursor) = &self.cursor {
            query = query.cursor(cursor);
        }
        Ok(query)
    }
}

/// Text of a JSON field: strings bare, null as `-`.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

pub(super) fn status_text(json: &Value) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<15}{value}\n"));
    line("id", text(&json["id"]));
    line("state", text(&json["state"]));
    if json["state"] == "unknown" {
        line(
            "",
            "no event of it has reached the server's index: never published, not taken by a \
             worker yet, or its events are on their way"
                .to_owned(),
        );
    } else {
        line("task", text(&json["task"]));
        line("queue", text(&json["queue"]));
        line("attempt", text(&json["attempt"]));
        line("delivery count", text(&json["delivery_count"]));
        if json["replays"].as_u64().is_some_and(|n| n > 0) {
            line("replays", text(&json["replays"]));
        }
        line("worker", text(&json["worker"]));
        line("published", text(&json["published_at"]));
        line("updated", text(&json["updated_at"]));
        line("started", text(&json["started_at"]));
        line("ended", text(&json["ended_at"]));
        if !json["retry_at"].is_null() {
            line("retry at", text(&json["retry_at"]));
        }
        if let Some(error) = json["error"].as_object() {
            let (kind, reason) = (text(&error["kind"]), text(&error["reason"]));
            line("error", format!("{kind}: {reason}"));
        }
        if !json["result"].is_null() {
            line("result", json["result"].to_string());
        }
        if !json["result_error"].is_null() {
            line(
                "result",
                format!("left out: {}", text(&json["result_error"])),
            );
        }
        if let Some(payload) = payload_text(&json["payload"]) {
            line("payload", payload);
        }
    }
    out + &index_note(json)
}

/// The copy of the payload a `published` event carried: its JSON, text or base64, and its
/// size when cut.
fn payload_text(copy: &Value) -> Option<String> {
    let shown = match (&copy["json"], &copy["text"], &copy["base64"]) {
        (Value::Null, Value::Null, Value::Null) => return None,
        (Value::Null, Value::Null, base64) => format!("base64 {}", text(base64)),
        (Value::Null, prefix, _) => text(prefix),
        (json, _, _) => json.to_string(),
    };
    Some(match copy["cut"].as_bool() {
        Some(true) => format!("{shown}… (cut; {} bytes in all)", text(&copy["size"])),
        _ => shown,
    })
}

fn list_text(json: &Value) -> String {
    let tasks = json["tasks"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 6]> = tasks
        .iter()
        .map(|t| ["id", "state", "task", "queue", "attempt", "updated_at"].map(|f| text(&t[f])))
        .collect();
    let header = ["ID", "STATE", "TASK", "QUEUE", "ATTEMPT", "UPDATED"];
    let mut out = table(header, &rows);
    if let Some(cursor) = json["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {cursor}\n"));
    }
    out + &index_note(json)
}

/// Rows under a header, in columns as wide as their widest cell.
pub(super) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A warning when the server's index may miss events, or is catching up on a backlog.
pub(super) fn index_note(json: &Value) -> String {
    let mut note = match json["index"]["incomplete_since"].as_str() {
        Some(since) => format!(
            "note: this server's index may miss events from {since} on (see its \
             warren_index_gaps_total)\n"
        ),
        None => String::new(),
    };
    if json["index"]["caught_up"] == false {
        note.push_str(
            "note: this server's index is catching up on the events stream: statuses may be \
             far behind\n",
        );
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_reads_as_lines_and_an_unknown_one_says_so() {
        let status = json!({"id": "a", "state": "dead_lettered", "task": "t", "queue": "q",
            "attempt": 3, "delivery_count": 0, "worker": "w", "updated_at": "2026-01-01T00:00:00.000Z",
            "started_at": null, "ended_at": "2026-01-01T00:00:00.000Z", "retry_at": null,
            "error": {"kind": "retries_exhausted", "reason": "boom"},
            "index": {"incomplete_since": null, "events_until": null}});
        let text = status_text(&status);
        assert!(text.contains("state          dead_lettered\n"), "{text}");
        assert!(
            text.contains("error          retries_exhausted: boom\n"),
            "{text}"
        );
        assert!(!text.contains("retry at"));
        assert!(!text.contains("result"), "{text}");
        let succeeded = json!({"id": "c", "state": "succeeded", "result": {"size": [1, 2]},
            "index": {"incomplete_since": null}});
        let text = status_text(&succeeded);
        assert!(text.contains("result         {\"size\":[1,2]}\n"), "{text}");
        let left_out = json!({"id": "d", "state": "succeeded", "result_error": "too big",
            "index": {"incomplete_since": null}});
        assert!(status_text(&left_out).contains("result         left out: too big\n"));
        let published = json!({"id": "c", "state": "published", "published_at": "2026-01-01T00:00:00.000Z",
            "payload": {"size": 9, "json": {"ms": 10}}, "index": {}});
        let text = status_text(&published);
        assert!(text.contains("payload        {\"ms\":10}\n"), "{text}");
        let cut = json!({"state": "published", "payload": {"size": 90, "cut": true, "text": "{\"a"},
            "index": {}});
        let text = status_text(&cut);
        assert!(
            text.contains("payload        {\"a… (cut; 90 bytes in all)\n"),
            "{text}"
        );
        let unknown = json!({"id": "b", "state": "unknown", "task": null,
            "index": {"incomplete_since": "2026-01-01T00:00:00.000Z"}});
        let text = status_text(&unknown);
        assert!(
            text.starts_with("id             b\nstate          unknown\n"),
            "{text}"
        );
        assert!(text.contains("may miss events from 2026-01-01"), "{text}");
        assert!(!text.contains("catching up"), "{text}");
        let behind = json!({"id": "c", "state": "unknown", "index": {"caught_up": false}});
        assert!(status_text(&behind).contains("is catching up"));
    }

    #[test]
    fn a_listing_is_a_table_with_the_next_cursor() {
        let page = json!({"tasks": [{"id": "a", "state": "running", "task": "t", "queue": "q",
            "attempt": 1, "updated_at": "2026-01-01T00:00:00.000Z"}],
            "next_cursor": "1.61", "index": {"incomplete_since": null}});
        let text = list_text(&page);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  STATE    TASK  QUEUE  ATTEMPT  UPDATED");
        assert_eq!(
            lines[1],
            "a   running  t     q      1        2026-01-01T00:00:00.000Z"
        );
        assert_eq!(lines[2], "more: --cursor 1.61");
    }
}
