//! The console tests' fixtures: a queue with its streams, index and token file unique to one
//! test, its worker, and `warren-producer serve --console` started as an operator would.

use crate::binary;
use crate::http_ingest::support::{delete_stream, listening, sigterm};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use warren_cli::demo;
use warren_tests::*;
use warren_worker::{Registry, WorkerConfig};

pub(crate) const TOKEN: &str = "console-token";

/// A queue, its events and control streams, an index and a token file, unique to one test.
pub(crate) struct Names {
    pub(crate) queue: String,
    pub(crate) events: String,
    pub(crate) control: String,
    pub(crate) dir: PathBuf,
    pub(crate) token_file: PathBuf,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        let queue = unique_queue(prefix);
        let dir = std::env::temp_dir().join(&queue);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Names {
            events: format!("{queue}.events"),
            control: format!("{queue}.control"),
            queue,
            dir,
            token_file,
        }
    }

    /// A worker of the queue running the demo tasks, recording events and following the
    /// control stream.
    pub(crate) async fn worker(&self) -> TestWorker {
        self.worker_of(test_config(&self.queue).concurrency).await
    }

    /// [`worker`](Self::worker) running at most `concurrency` tasks at once.
    pub(crate) async fn worker_of(&self, concurrency: usize) -> TestWorker {
        let mut config: WorkerConfig = test_config(&self.queue);
        config.concurrency = concurrency;
        config.events_stream = Some(self.events.clone());
        config.control_stream = Some(self.control.clone());
        let mut registry = Registry::new();
        demo::register(&mut registry);
        TestWorker::start(registry, config).await
    }

    pub(crate) async fn clean_up(self) {
        let conn = raw_connection().await;
        delete_queues(&conn, &self.queue).await;
        delete_stream(&conn, &self.events).await;
        delete_stream(&conn, &self.control).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `warren-producer serve --console`, as an operator starts it.
pub(crate) struct Serve {
    child: Child,
    /// What it logged.
    pub(crate) lines: Arc<Mutex<Vec<String>>>,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Serve {
    /// Started with the token; `args` besides (e.g. `--console-actions`).
    pub(crate) async fn start(names: &Names, args: &[&str]) -> Serve {
        Serve::start_with(names, true, args).await
    }

    /// Started with or without the token.
    pub(crate) async fn start_with(names: &Names, token: bool, args: &[&str]) -> Serve {
        Serve::spawn(names, &amqp_url(), token, args).await
    }

    /// Started without the token against the broker at `url`.
    pub(crate) async fn start_on(names: &Names, url: &str, args: &[&str]) -> Serve {
        Serve::spawn(names, url, false, args).await
    }

    async fn spawn(names: &Names, url: &str, token: bool, args: &[&str]) -> Serve {
        let mut command = Command::new(binary("warren-producer"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--queue", &names.queue])
            .args([
                "--events-stream",
                &names.events,
                "--control-stream",
                &names.control,
            ])
            .arg("--index")
            .arg(names.dir.join("index.db"))
            .args(["--console", "--console-refresh", "1s"])
            .args(args)
            .env("AMQP_URL", url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if token {
            command.arg("--auth-token-file").arg(&names.token_file);
        }
        let mut child = command.spawn().expect("warren-producer serve starts");
        let (lines, addr) = listening(&mut child, Duration::from_secs(60)).await;
        Serve {
            child,
            lines,
            url: format!("http://{addr}"),
        }
    }

    /// Stops it as an orchestrator would, and checks it stopped cleanly.
    pub(crate) async fn stop(mut self) {
        sigterm(&self.child);
        let waited = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let lines = self.lines.lock().unwrap().join("\n");
        let status = waited.unwrap_or_else(|_| panic!("serve did not stop in 20 s:\n{lines}"));
        assert!(status.expect("serve ran").success(), "{lines}");
    }
}
