//! The stock binaries as cargo built them for this test binary (`CARGO_BIN_EXE_*`), and a
//! `warren-worker` process with its log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use warren_tests::{capture_lines, http_get, samples, wait_for_line};

/// Path of an example program of the workspace (`worker`, `publish`). Cargo builds the
/// examples that have no tests of their own for the suite; `scripts/test` runs
/// `cargo build --workspace --examples` for the others first.
pub fn example(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/suite-<hash> -> target/<profile>/examples/<name>
    let examples = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps")
        .join("examples");
    let path = examples.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --examples` (scripts/test does)",
        path.display()
    );
    path
}

/// Path of one of the stock binaries: `warren-worker`, `warren-producer` or
/// `warren-scheduler`. Cargo builds them before it builds this test.
pub fn binary(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "warren-worker" => env!("CARGO_BIN_EXE_warren-worker"),
        "warren-producer" => env!("CARGO_BIN_EXE_warren-producer"),
        "warren-scheduler" => env!("CARGO_BIN_EXE_warren-scheduler"),
        other => panic!("no binary named {other}"),
    })
}

/// `RUST_LOG` of a worker whose log is read for the tasks it finished: successes are logged
/// at debug (`task finished`), everything else at the stock binary's info.
pub const TASK_LOG: &str = "info,warren_worker=debug";

/// A `warren-worker` process with its captured log lines and admin address.
pub struct WorkerProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Its stderr, line by line.
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The admin server's bound address.
    pub admin: String,
}

impl WorkerProcess {
    /// Starts `warren-worker` with `args` (plus an admin server on a free port) and waits
    /// until its admin server listens.
    pub async fn start(args: &[&str], amqp_url: &str) -> WorkerProcess {
        Self::start_program(&binary("warren-worker"), args, amqp_url).await
    }

    /// Starts `program`, a worker built on `warren_worker::run` (the stock binary, an
    /// example), like [`start`](Self::start).
    pub async fn start_program(
        program: &std::path::Path,
        args: &[&str],
        amqp_url: &str,
    ) -> WorkerProcess {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .args(["--admin-addr", "127.0.0.1:0"])
            .env("AMQP_URL", amqp_url)
            .env("RUST_LOG", TASK_LOG)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        let lines = capture_lines(child.stderr.take().expect("stderr is piped"));
        let line = wait_for_line(&lines, "admin server listening", Duration::from_secs(30))
            .await
            .expect("the admin server starts");
        // `admin_addr=ADDR` in text logs, `"admin_addr":"ADDR"` in JSON ones.
        let admin = line
            .split("admin_addr")
            .nth(1)
            .map(|s| s.trim_start_matches(['=', '"', ':']))
            .and_then(|s| s.split(|c: char| c == '"' || c.is_whitespace()).next())
            .expect("the line names the address")
            .to_owned();
        WorkerProcess {
            child,
            lines,
            admin,
        }
    }

    /// Sends a signal (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(status.expect("kill runs").success());
    }

    /// Ids of the tasks this worker finished successfully, from its log (at [`TASK_LOG`]).
    pub fn finished_ids(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l.contains("task finished"))
            .filter_map(|l| {
                l.split("task_id=")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .map(|id| id.trim_matches('"').to_owned())
            .collect()
    }

    /// `GET /readyz` status code (0 if the server does not answer).
    pub async fn readiness(&self) -> u16 {
        http_get(&self.admin, "/readyz")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
    }
}

impl WorkerProcess {
    /// Every sample of the worker's `/metrics` (empty if it does not answer).
    pub async fn scrape(&self) -> BTreeMap<String, f64> {
        http_get(&self.admin, "/metrics")
            .await
            .map(|(_, body)| samples(&body))
            .unwrap_or_default()
    }
}

/// The pid of the shared broker's connection named exactly `name`, as `rabbitmqctl` knows it.
pub fn connection_pid(name: &str) -> Option<String> {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let quoted = format!("\"{name}\"");
    text.lines()
        .find(|line| line.contains(&quoted))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

/// Has the shared broker close the connection named `name` (`rabbitmqctl close_connection`),
/// as a network fault would.
pub fn close_connection(name: &str, why: &str) {
    let pid = connection_pid(name).unwrap_or_else(|| panic!("no connection named {name:?}"));
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, why])
        .output()
        .expect("rabbitmqctl runs");
    assert!(closed.status.success(), "{closed:?}");
}
