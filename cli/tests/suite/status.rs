//! The status index against the real broker: a worker records its tasks' transitions in an
//! events stream, `warren-producer serve --events-stream S --index FILE` follows it, and
//! `GET /v1/tasks/{id}`, `GET /v1/tasks` and `warren-producer tasks` report each task's state
//! alike (every answer checked against docs/openapi.yaml); a killed index resumes and equals
//! one built from the stream's start; a stream cut by retention or recreated is reported.

mod broker;
mod client;
mod published;
mod restart;
mod volume;
mod workers;

use crate::binary;
use crate::http_ingest::openapi::Spec;
use crate::http_ingest::support::{
    delete_stream, listening, remove_index, serve_command, sigterm, Client, JSON,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::process::Child;
use warren_cli::demo;
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{Registry, RetryPolicy};

const TOKEN: &str = "status-token";

/// A queue, its events stream, an index file and a token file, all unique to one test.
struct Names {
    queue: String,
    stream: String,
    dir: PathBuf,
    token_file: PathBuf,
}

impl Names {
    fn new(prefix: &str) -> Names {
        let queue = unique_queue(prefix);
        let dir = std::env::temp_dir().join(&queue);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Names {
            stream: format!("{queue}.events"),
            queue,
            dir,
            token_file,
        }
    }

    /// The control stream the test's workers and server use.
    fn control(&self) -> String {
        format!("{}.control", self.queue)
    }

    fn index(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn clean_up(self) {
        let conn = raw_connection().await;
        delete_queues(&conn, &self.queue).await;
        delete_stream(&conn, &self.stream).await;
        delete_stream(&conn, &self.control()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `warren-producer serve` with a status index, as an operator starts it.
struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    client: Client,
    url: String,
}

impl Serve {
    async fn start(names: &Names, index: &Path) -> Serve {
        Serve::start_with(names, index, &[]).await
    }

    /// Started with `args` besides.
    async fn start_with(names: &Names, index: &Path, args: &[&str]) -> Serve {
        let mut child = serve_command(&names.queue, "127.0.0.1:0", &names.token_file)
            .args(["--events-stream", &names.stream, "--index"])
            .arg(index)
            .args(["--control-stream", &names.control()])
            .args(args)
            .spawn()
            .expect("warren-producer serve starts");
        let (lines, addr) = listening(&mut child, Duration::from_secs(60)).await;
        let url = format!("http://{addr}");
        let client = Client::new(&url, Arc::new(Spec::load())).with_token(TOKEN);
        Serve {
            child,
            lines,
            client,
            url,
        }
    }

    /// The JSON status of task `id`.
    async fn status(&self, id: &str) -> Value {
        let answer = self.client.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.json
    }

    async fn state(&self, id: &str) -> String {
        self.status(id).await["state"]
            .as_str()
            .expect("a state")
            .to_owned()
    }

    async fn wait_for_state(&self, id: &str, state: &str) {
        wait_until(
            Duration::from_secs(60),
            &format!("task {id} to be {state}"),
            || async { self.state(id).await == state },
        )
        .await;
    }

    /// Every id the listing `query` gives, following its cursors.
    async fn list_ids(&self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/tasks?{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let answer = self.client.get(&path).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.text);
            for task in answer.json["tasks"].as_array().expect("tasks") {
                ids.push(task["id"].as_str().expect("an id").to_owned());
            }
            match answer.json["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }

    async fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        samples(&self.client.get("/metrics").await.text)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    async fn kill(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }

    /// Stops it as an orchestrator would (SIGTERM) and waits for it.
    async fn stop(mut self) {
        sigterm(&self.child);
        let waited = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let Ok(status) = waited else {
            let lines = self.lines.lock().unwrap();
            let last = &lines[lines.len().saturating_sub(20)..];
            panic!(
                "serve did not stop within 20 s; its last lines:\n{}",
                last.join("\n")
            );
        };
        let status = status.expect("serve runs");
        assert!(status.success(), "{status:?}");
    }
}

/// Runs `warren-producer tasks ARGS` against `serve`: (exit code, stdout).
async fn cli(serve: &Serve, names: &Names, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(binary("warren-producer"))
        .arg("tasks")
        .args(args)
        .args(["--server", &serve.url, "--auth-token-file"])
        .arg(&names.token_file)
        .output()
        .await
        .expect("warren-producer tasks runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), stdout + &stderr)
}

/// The state `warren-producer tasks status ID` reports, in JSON and in text, which agree.
async fn cli_state(serve: &Serve, names: &Names, id: &str) -> String {
    let (code, json) = cli(serve, names, &["status", id, "--json"]).await;
    assert_eq!(code, 0, "{json}");
    let json: Value = serde_json::from_str(&json).expect("--json prints JSON");
    let state = json["state"].as_str().expect("a state").to_owned();
    let (code, text) = cli(serve, names, &["status", id]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("\nstate          {state}\n")),
        "{text}"
    );
    state
}

#[tokio::test]
async fn each_state_is_reported_alike_by_http_and_the_cli() {
    let names = Names::new("status.states");
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    // Long enough to see the task waiting for its second attempt.
    config.retry = RetryPolicy {
        initial: Duration::from_secs(2),
        multiplier: 1.0,
        max: Duration::from_secs(2),
        jitter: 0.0,
    };
    let worker_id = config.worker_id.clone();
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config).await;
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let publisher = publisher(&names.queue).await;
    let options = TaskOptions::new;
    let noop = publisher
        .publish("demo.noop", &(), &options())
        .await
        .unwrap();
    let flaky = publisher
        .send(&demo::Flaky { fail_times: 1 })
        .await
        .unwrap();
    let fail = publisher
        .publish("demo.fail", &(), &options().max_attempts(1))
        .await
        .unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    let expired = publisher
        .publish("demo.noop", &(), &options().expires_at(past))
        .await
        .unwrap();
    let sleep = publisher.send(&demo::Sleep { ms: 4000 }).await.unwrap();
    let [noop, flaky, fail, expired, sleep] =
        [noop, flaky, fail, expired, sleep].map(|id| id.to_string());

    // The states on the way: running, retrying.
    serve.wait_for_state(&sleep, "running").await;
    assert_eq!(cli_state(&serve, &names, &sleep).await, "running");
    serve.wait_for_state(&flaky, "retrying").await;
    let retrying = serve.status(&flaky).await;
    assert_eq!(retrying["attempt"], 1);
    assert_eq!(retrying["error"]["reason"], "flaky failure 1 of 1");
    assert!(retrying["retry_at"].is_string(), "{retrying}");

    // The endings.
    let ended = [
        (&noop, "succeeded"),
        (&flaky, "succeeded"),
        (&fail, "dead_lettered"),
        (&expired, "expired"),
        (&sleep, "succeeded"),
    ];
    for (id, state) in ended {
        serve.wait_for_state(id, state).await;
        assert_eq!(cli_state(&serve, &names, id).await, state, "task {id}");
    }
    let status = serve.status(&flaky).await;
    assert_eq!(
        (status["attempt"].clone(), status["error"].clone()),
        (2.into(), Value::Null)
    );
    assert_eq!(status["worker"], worker_id.as_str());
    let dead = serve.status(&fail).await;
    assert_eq!(dead["error"]["kind"], "retries_exhausted");
    assert_eq!(dead["task"], "demo.fail");
    assert_eq!(dead["queue"], names.queue.as_str());
    assert!(dead["index"]["incomplete_since"].is_null());
    let sleeping = serve.status(&sleep).await;
    assert!(
        sleeping["started_at"].as_str() < sleeping["ended_at"].as_str(),
        "{sleeping}"
    );

    // Listings: each filter alone and together, paged two by two.
    let set = |ids: Vec<String>| ids.into_iter().collect::<BTreeSet<_>>();
    let succeeded = serve.list_ids("state=succeeded&limit=2").await;
    assert_eq!(
        set(succeeded),
        set(vec![noop.clone(), flaky.clone(), sleep.clone()])
    );
    let all = serve
        .list_ids(&format!("queue={}&limit=2", names.queue))
        .await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(serve.list_ids("task=demo.fail").await, vec![fail.clone()]);
    assert_eq!(
        serve.list_ids("task=demo.noop&state=expired").await,
        vec![expired.clone()]
    );
    assert!(serve
        .list_ids("since=2999-01-01T00:00:00Z")
        .await
        .is_empty());
    let (code, listed) = cli(
        &serve,
        &names,
        &["list", "--state", "dead_lettered", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["tasks"][0]["id"], fail.as_str());
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);
    let (code, table) = cli(&serve, &names, &["list", "--task", "demo.sleep"]).await;
    assert_eq!(code, 0, "{table}");
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&format!("{sleep}  succeeded  demo.sleep")),
        "{table}"
    );

    // An id the index has never seen.
    let unknown = serve.client.get("/v1/tasks/no-such-task").await;
    assert_eq!(
        (unknown.status, unknown.json["state"].clone()),
        (200, "unknown".into())
    );
    assert!(unknown.json["task"].is_null(), "{}", unknown.text);
    assert_eq!(cli_state(&serve, &names, "no-such-task").await, "unknown");
    // The CLI without the token is refused, and says so.
    let output = tokio::process::Command::new(binary("warren-producer"))
        .args(["tasks", "status", &noop, "--server", &serve.url])
        .env_remove("WARREN_AUTH_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));

    let metrics = serve.metrics().await;
    let count = |state| {
        sample(
            &metrics,
            "warren_index_tasks",
            &[("queue", &names.queue), ("state", state)],
        )
    };
    assert_eq!(
        (count("succeeded"), count("dead_lettered"), count("expired")),
        (3.0, 1.0, 1.0)
    );
    assert_eq!(count("running") + count("retrying"), 0.0);
    assert!(
        sample(
            &metrics,
            "warren_index_events_total",
            &[("outcome", "applied")]
        ) >= 7.0
    );
    worker.stop().await;
    serve.stop().await;
    names.clean_up().await;
}

/// Runs `warren-producer tasks cancel ID` for the test's control stream, asking `serve`
/// whether the task had ended: (exit code, stdout and stderr).
async fn cli_cancel(serve: &Serve, names: &Names, id: &str) -> (i32, String) {
    let control = names.control();
    let (code, out) = cli(serve, names, &["cancel", id, "--control-stream", &control]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("cancel of {id} recorded")), "{out}");
    (code, out)
}

#[tokio::test]
async fn cancelled_tasks_are_reported_alike_and_a_late_cancel_says_the_task_had_ended() {
    let names = Names::new("status.cancel");
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    config.control_stream = Some(names.control());
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config).await;
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let publisher = publisher(&names.queue).await;
    let long = || demo::Sleep { ms: 600_000 };
    let running_cli = publisher.send(&long()).await.unwrap().to_string();
    let running_http = publisher.send(&long()).await.unwrap().to_string();
    let delayed = TaskOptions::new().delay(Duration::from_secs(2));
    let delayed = publisher
        .publish("demo.noop", &(), &delayed)
        .await
        .unwrap()
        .to_string();
    let done = publisher
        .publish("demo.noop", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();

    // Running: stopped, through the CLI and through HTTP.
    serve.wait_for_state(&running_cli, "running").await;
    serve.wait_for_state(&running_http, "running").await;
    let (_, out) = cli_cancel(&serve, &names, &running_cli).await;
    assert!(!out.contains("finished before the cancel"), "{out}");
    let answer = serve
        .client
        .post_raw(
            &format!("/v1/tasks/{running_http}/cancel"),
            JSON,
            String::new(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(answer.json["finished_before_cancel"], Value::Null);
    // In the delay cascade: not run when it comes back.
    cli_cancel(&serve, &names, &delayed).await;
    for id in [&running_cli, &running_http, &delayed] {
        serve.wait_for_state(id, "cancelled").await;
        assert_eq!(
            cli_state(&serve, &names, id).await,
            "cancelled",
            "task {id}"
        );
    }
    let cancelled = serve.list_ids("state=cancelled").await;
    assert_eq!(
        cancelled.into_iter().collect::<BTreeSet<_>>(),
        [&running_cli, &running_http, &delayed]
            .into_iter()
            .cloned()
            .collect()
    );

    // A cancel that loses the race says so, and the task stays succeeded.
    serve.wait_for_state(&done, "succeeded").await;
    let (_, out) = cli_cancel(&serve, &names, &done).await;
    assert!(
        out.contains("finished before the cancel: succeeded"),
        "{out}"
    );
    let late = serve
        .client
        .post_raw(&format!("/v1/tasks/{done}/cancel"), JSON, String::new())
        .await;
    assert_eq!(late.json["finished_before_cancel"], "succeeded");
    assert_eq!(cli_state(&serve, &names, &done).await, "succeeded");

    let report = worker.stop().await;
    assert_eq!(report.totals.retried + report.totals.dead_lettered, 0);
    assert_eq!(report.abandoned, 0);
    serve.stop().await;
    names.clean_up().await;
}
