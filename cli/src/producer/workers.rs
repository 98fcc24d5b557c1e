//! `warren-producer workers`: the workers a `warren-producer serve --index` has heard from
//! (`GET /v1/workers`, see docs/openapi.yaml), alive and recently gone. Text for people, or
//! the server's JSON answer with `--json`.

use super::tasks::{answered, client, index_note, table, text, ServerArgs};
use serde_json::Value;
use std::process::ExitCode;

/// Arguments of `workers`.
#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// Asks the server and prints its answer. Exit codes: 0 answered, 1 the server refused the
/// request, 69 the server could not be reached.
pub async fn run(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let json = match answered(client(&args.server)?.workers().await)? {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.server.json {
        println!("{json}");
    } else {
        print!("{}", workers_text(&json));
    }
    Ok(ExitCode::SUCCESS)
}

fn workers_text(json: &Value) -> String {
    let workers = json["workers"].as_array().cloned().unwrap_or_default();
    let list = |value: &Value| {
        let items: Vec<String> = value
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let rows: Vec<[String; 7]> = workers
        .iter()
        .map(|w| {
            let status = match w["gone_reason"].as_str() {
                Some(reason) => format!("gone ({reason})"),
                None => text(&w["status"]),
            };
            [
                text(&w["id"]),
                status,
                format!("{}:{}", text(&w["host"]), text(&w["pid"])),
                list(&w["queues"]),
                text(&w["concurrency"]),
                list(&w["running"]),
                text(&w["last_heartbeat_at"]),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATUS",
        "HOST:PID",
        "QUEUES",
        "CONCURRENCY",
        "RUNNING",
        "LAST HEARTBEAT",
    ];
    table(header, &rows) + &index_note(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workers_read_as_a_table_with_why_they_are_gone() {
        let answer = json!({"workers": [
            {"id": "w1", "status": "alive", "gone_reason": null, "host": "h", "pid": 7,
             "queues": ["a", "b"], "concurrency": 4, "running": ["t1"],
             "last_heartbeat_at": "2026-01-01T00:00:00.000Z"},
            {"id": "w2", "status": "gone", "gone_reason": "silent", "host": "h", "pid": 8,
             "queues": ["a"], "concurrency": 1, "running": [],
             "last_heartbeat_at": "2026-01-01T00:00:00.000Z"}],
            "index": {"incomplete_since": null}});
        let text = workers_text(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  STATUS         HOST:PID  QUEUES  CONCURRENCY  RUNNING  LAST HEARTBEAT"
        );
        assert_eq!(
            lines[1],
            "w1  alive          h:7       a,b     4            t1       2026-01-01T00:00:00.000Z"
        );
        assert!(lines[2].starts_with("w2  gone (silent)  h:8       a       1            -"));
    }
}
