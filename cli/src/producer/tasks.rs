//! `warren-producer tasks status|list`: what became of tasks, asked of a `warren-producer
//! serve` that keeps a status index (`GET /v1/tasks/{id}` and `GET /v1/tasks`, see
//! docs/openapi.yaml). Text for people, or the server's JSON answer with `--json`.

use super::client::{encode, Answer, Client, ClientError};
use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use warren_common::process::exit;

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
    /// Show a task's status: running, lost (its worker is gone), retrying, succeeded,
    /// dead_lettered, expired, or unknown (no event of it has reached the server's index).
    Status(StatusArgs),
    /// List tasks, newest change first.
    List(ListArgs),
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
    #[arg(long, value_parser = ["running", "lost", "retrying", "succeeded", "dead_lettered", "expired", "cancelled"])]
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
/// included), 1 the server refused the request, 69 the server could not be reached.
pub async fn run(
    args: TasksArgs,
    amqp: &warren_common::Amqp,
    shutdown: &warren_common::Shutdown,
) -> anyhow::Result<ExitCode> {
    let path = match args.command {
        TasksCommand::Status(ref status) => format!("/v1/tasks/{}", encode(&status.id)),
        TasksCommand::List(ref list) => format!("/v1/tasks?{}", list.query()),
        TasksCommand::Cancel(cancel) => {
            return super::control::cancel(cancel, &args.server, amqp, shutdown).await
        }
    };
    let status = matches!(args.command, TasksCommand::Status(_));
    let json = match ask(&args.server, &path, |answer, json| {
        // An unknown task is a 200; a 404 saying so is taken as the same answer.
        status && answer.status == 404 && json["state"] == "unknown"
    })
    .await?
    {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.server.json {
        println!("{json}");
    } else {
        match args.command {
            TasksCommand::Status(_) => print!("{}", status_text(&json)),
            TasksCommand::List(_) => print!("{}", list_text(&json)),
            TasksCommand::Cancel(_) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The ending the server's index shows for task `id` (`succeeded`, `dead_lettered`,
/// `expired`), if the server answers and shows one: a cancel made now lost the race.
pub(super) async fn ended_state(args: &ServerArgs, id: &str) -> Option<String> {
    let token = match &args.auth_token_file {
        None => None,
        Some(path) => Some(std::fs::read_to_string(path).ok()?.trim().to_owned()),
    };
    let client = Client::new(&args.server, token).ok()?;
    let answer = client
        .get(&format!("/v1/tasks/{}", encode(id)))
        .await
        .ok()?;
    let json: Value = serde_json::from_slice(&answer.body).ok()?;
    let state = json["state"].as_str()?;
    matches!(state, "succeeded" | "dead_lettered" | "expired").then(|| state.to_owned())
}

/// GETs `path` from the server: its JSON answer if 200 (or `also_answered`), else the exit
/// code of a refusal (1, the server's message printed) or of an unreachable server (69).
pub(super) async fn ask(
    args: &ServerArgs,
    path: &str,
    also_answered: impl Fn(&Answer, &Value) -> bool,
) -> anyhow::Result<Result<Value, ExitCode>> {
    let token = match &args.auth_token_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--auth-token-file {}: cannot read", path.display()))?
                .trim()
                .to_owned(),
        ),
    };
    let client = Client::new(&args.server, token)?;
    let answer = match client.get(path).await {
        Ok(answer) => answer,
        Err(error @ ClientError::Unreachable(_)) => {
            eprintln!("error: cannot reach the server: {error}");
            return Ok(Err(ExitCode::from(exit::UNAVAILABLE)));
        }
        Err(error) => return Err(error.into()),
    };
    let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if answer.status == 200 || also_answered(&answer, &json) {
        Ok(Ok(json))
    } else {
        Ok(Err(refused(&answer, &json)))
    }
}

impl ListArgs {
    fn query(&self) -> String {
        let limit = self.limit.to_string();
        let pairs = [
            ("state", self.state.as_deref()),
            ("task", self.task.as_deref()),
            ("queue", self.queue.as_deref()),
            ("since", self.since.as_deref()),
            ("limit", Some(limit.as_str())),
            ("cursor", self.cursor.as_deref()),
        ];
        let given = pairs
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode((*v)?))));
        given.collect::<Vec<_>>().join("&")
    }
}

/// A refusal: the server's error message, exit code 1.
fn refused(answer: &Answer, json: &Value) -> ExitCode {
    let message = json["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    eprintln!("error: the server answered {}: {message}", answer.status);
    ExitCode::from(exit::FAILURE)
}

/// Text of a JSON field: strings bare, null as `-`.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn status_text(json: &Value) -> String {
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
        line("worker", text(&json["worker"]));
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
    }
    out + &index_note(json)
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

/// A warning when the server's index may miss events.
pub(super) fn index_note(json: &Value) -> String {
    match json["index"]["incomplete_since"].as_str() {
        Some(since) => format!(
            "note: this server's index may miss events from {since} on (see its \
             warren_index_gaps_total)\n"
        ),
        None => String::new(),
    }
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
        let unknown = json!({"id": "b", "state": "unknown", "task": null,
            "index": {"incomplete_since": "2026-01-01T00:00:00.000Z"}});
        let text = status_text(&unknown);
        assert!(
            text.starts_with("id             b\nstate          unknown\n"),
            "{text}"
        );
        assert!(text.contains("may miss events from 2026-01-01"), "{text}");
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
