//! A `warren-scheduler` process as the scheduler tests run it: a schedule file of its own,
//! the log lines it writes, its metrics, and the queues it leaves behind.

use crate::binary;
use lapin::options::QueueDeleteOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use warren_producer::scheduler::parse_task_id;
use warren_tests::*;

pub const PUBLISHED: &str = "warren_scheduler_ticks_published_total{schedule=\"beat\"}";
pub const MISSED: &str = "warren_scheduler_ticks_missed_total{schedule=\"beat\"}";

/// A schedule file in a directory of its own, removed on drop, and the names it implies.
pub struct Setup {
    dir: PathBuf,
    pub file: PathBuf,
    pub queue: String,
    pub lease: String,
}

impl Setup {
    /// One schedule `beat` publishing every second to a fresh queue, with `missed`.
    pub fn new(missed: &str) -> Setup {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("warren-scheduler-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let queue = unique_queue("sched");
        let toml = format!(
            "[[schedule]]\nname = \"beat\"\ntask = \"test.beat\"\nqueue = \"{queue}\"\n\
             every = \"1s\"\nmissed = \"{missed}\"\npayload = {{ n = 1 }}\n"
        );
        let file = dir.join("schedule.toml");
        std::fs::write(&file, toml).expect("schedule file written");
        let lease = format!("test.sched.{}", &id[..12]);
        Setup {
            dir,
            file,
            queue,
            lease,
        }
    }

    /// The quorum queue holding the last tick of `beat`.
    pub fn state_queue(&self) -> String {
        format!("{}.tick.beat", self.lease)
    }

    /// The classic queue in which versions before the quorum one kept the last tick of `beat`.
    pub fn classic_state_queue(&self) -> String {
        format!("{}.state.beat", self.lease)
    }

    /// Deletes the work queue, its dead letters, the state queues (of this and earlier
    /// versions) and the lease (if left).
    pub async fn delete_queues(&self, conn: &lapin::Connection) {
        delete_queues(conn, &self.queue).await;
        let channel = conn.create_channel().await.expect("channel");
        for name in [
            self.state_queue(),
            self.classic_state_queue(),
            format!("{}.lease", self.lease),
        ] {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A running `warren-scheduler` and its log lines, each with the instant it was read.
pub struct Replica {
    child: Child,
    lines: Lines,
}

impl Replica {
    pub fn start(file: &Path, lease: &str) -> Replica {
        Replica::start_with(file, lease, &[])
    }

    /// Started with `args` besides.
    pub fn start_with(file: &Path, lease: &str, args: &[&str]) -> Replica {
        let mut child = Command::new(binary("warren-scheduler"))
            .arg("--schedule")
            .arg(file)
            .args(["--lease-name", lease, "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info,lapin::channel=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("warren-scheduler starts");
        let lines: Lines = Default::default();
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Replica { child, lines }
    }

    /// The first line containing `needle` read after `since`, with its instant.
    pub fn find(&self, needle: &str, since: Instant) -> Option<(Instant, String)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .find(|(at, line)| *at >= since && line.contains(needle))
            .cloned()
    }

    pub async fn wait_for(&self, needle: &str, since: Instant, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self.find(needle, since) {
                return at;
            }
            if Instant::now() > deadline {
                let lines = self.lines.lock().unwrap();
                let all: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
                panic!("no {needle:?} within {timeout:?}:\n{}", all.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The ticks (ms since the epoch) this replica logged as published, with their catch-up
    /// flag.
    pub fn ticks(&self) -> Vec<(u64, bool)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, line)| line)
            .filter(|line| line.contains("tick published"))
            .map(|line| {
                let tick = field(line, "tick_ms").expect("tick_ms field");
                (tick, line.contains("catch_up=true"))
            })
            .collect()
    }

    pub async fn metrics(&self) -> String {
        let (_, line) = self
            .find(
                "admin server listening",
                Instant::now() - Duration::from_secs(3600),
            )
            .expect("the admin server started");
        let addr = line
            .split("admin_addr=")
            .nth(1)
            .expect("admin_addr field")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics body")
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the replica is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(mut self) {
        self.signal("-TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the replica exits after SIGTERM")
            .expect("wait works");
        assert!(status.success(), "SIGTERM must exit 0, got {status}");
    }
}

/// The value of a sample line `name{...} value` (or `name value`) in Prometheus text.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Milliseconds since the epoch of a tick id `beat@<RFC 3339>`.
pub fn tick_of(id: &str) -> u64 {
    match parse_task_id(id) {
        Some(("beat", tick)) => tick,
        _ => panic!("not a tick id of `beat`: {id}"),
    }
}

/// The ids of the messages taken out of the queue, in queue order.
pub async fn take_ids(conn: &lapin::Connection, queue: &str) -> Vec<String> {
    take_all(conn, queue)
        .await
        .iter()
        .map(|(props, _)| props.message_id().as_ref().expect("a task id").to_string())
        .collect()
}
