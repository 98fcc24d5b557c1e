//! Worker processes under test, Warren's and the baseline's alike: started with their admin
//! port announced on stderr, polled over HTTP for readiness and their success counter,
//! measured through /proc, and stopped with SIGTERM.

use crate::http;
use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Lines of a child's stderr kept for error messages.
const TAIL: usize = 40;

/// A running worker process.
pub struct Proc {
    child: Child,
    name: String,
    /// Its admin server.
    pub admin: SocketAddr,
    counter: &'static str,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stdout: Option<JoinHandle<String>>,
}

impl Proc {
    /// Starts `command` and waits (up to a minute) for its `admin_addr=` line on stderr.
    /// `counter` names the metric that counts its finished tasks.
    pub async fn spawn(
        name: &str,
        mut command: Command,
        counter: &'static str,
    ) -> anyhow::Result<Proc> {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text).await;
            text
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(read_stderr(stderr, tail.clone(), addr_tx));
        let admin = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                bail!("{name} announced no admin address:\n{}", lines(&tail));
            }
        };
        Ok(Proc {
            child,
            name: name.to_owned(),
            admin,
            counter,
            stderr: tail,
            stdout: Some(stdout),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Polls `/readyz` every millisecond until it answers 200; returns when it did.
    pub async fn wait_ready(&self) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http::get(self.admin, "/readyz").await {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{} never became ready:\n{}", self.name, self.stderr_tail());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Tasks finished so far, from `/metrics?name=COUNTER`: only the counter's lines, so a
    /// poll costs either side next to nothing (Warren's full page renders every series of
    /// every task type; the baseline's has the one line).
    pub async fn finished(&self) -> anyhow::Result<u64> {
        let path = format!("/metrics?name={}", self.counter);
        let (status, body) = http::get(self.admin, &path)
            .await
            .with_context(|| format!("scraping {}", self.name))?;
        anyhow::ensure!(
            status == 200,
            "{} answered /metrics with {status}",
            self.name
        );
        Ok(http::metric_sum(&body, self.counter) as u64)
    }

    /// Resident memory in MiB (VmRSS from /proc/PID/status).
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("reading /proc for {}", self.name))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS line")?;
        Ok(kib / 1024.0)
    }

    /// CPU time the process has used so far (user + system, all threads), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(&self.pid().to_string())
    }

    /// CPU time of its lapin I/O threads, in seconds (see [`io_thread_seconds`]).
    pub fn io_cpu_seconds(&self) -> Option<f64> {
        io_thread_seconds(&self.pid().to_string())
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        lines(&self.stderr)
    }

    /// Sends SIGTERM and waits (up to `grace`) for the process to exit, killing it after;
    /// returns its stdout.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<String> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .context("running kill")?;
        self.wait_exit(grace).await
    }

    /// Waits (up to `timeout`) for the process to exit by itself, killing it after; returns
    /// its stdout. Fails if it did not exit successfully.
    pub async fn wait_exit(mut self, timeout: Duration) -> anyhow::Result<String> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
        };
        let stdout = match self.stdout.take() {
            Some(handle) => handle.await.unwrap_or_default(),
            None => String::new(),
        };
        // A profiler wrapping the process (`WARREN_BENCH_WRAP`) may die of the SIGTERM it
        // passes on: that is how it was asked to stop.
        let wrapped_term = std::env::var_os(crate::launch::WRAP_ENV).is_some()
            && std::os::unix::process::ExitStatusExt::signal(&status) == Some(15);
        if !status.success() && !wrapped_term {
            bail!(
                "{} exited with {status}:\n{}",
                self.name,
                self.stderr_tail()
            );
        }
        Ok(stdout)
    }
}

/// The pid of the local process listening on TCP `port` (the broker's AMQP port), if this
/// user may see it and read its CPU time: the broker shares the machine's cores with the
/// workers, so its CPU time per task is part of what each side costs. Found through the
/// listening socket's inode (`/proc/net/tcp*`) and the process holding it (`/proc/*/fd`), so
/// that a `rabbitmqctl` running meanwhile or another node on the machine is not mistaken
/// for it.
pub fn listening_pid(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let holds = |pid: &std::path::Path| -> bool {
        let Ok(fds) = std::fs::read_dir(pid.join("fd")) else {
            return false;
        };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
        })
    };
    let pid = std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        (name.bytes().all(|b| b.is_ascii_digit()) && holds(&entry.path())).then_some(name)
    })?;
    cpu_seconds(&pid).is_ok().then_some(pid)
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local_port = f.get(1)?.rsplit(':').next()?;
                    if local_port != port || *f.get(3)? != LISTEN {
                        return None;
                    }
                    Some(f.get(9)?.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// CPU time of process `pid` (or `self`), in seconds: the sum over its live threads of
/// the nanoseconds on CPU in /proc/PID/task/*/schedstat, or (without schedstat) user +
/// system time from /proc/PID/stat in 10 ms ticks.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    if let Some(ns) = schedstat_ns(pid) {
        return Ok(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("a short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU time of the threads of process `pid` named [`IO_THREAD`], in seconds (`None` without
/// schedstat): what lapin's I/O loops cost, apart from the code that handles the deliveries.
pub fn io_thread_seconds(pid: &str) -> Option<f64> {
    threads_ns(pid, |name| name == IO_THREAD).map(|ns| ns as f64 / 1e9)
}

/// The name lapin gives the thread that reads and writes a connection's socket.
const IO_THREAD: &str = "lapin-io-loop";

fn schedstat_ns(pid: &str) -> Option<u64> {
    threads_ns(pid, |_| true)
}

/// Nanoseconds on CPU of the live threads of `pid` whose name passes `pick`.
fn threads_ns(pid: &str, pick: impl Fn(&str) -> bool) -> Option<u64> {
    let mut total = 0;
    for thread in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = thread.ok()?.path();
        // A thread that just exited has no files any more: skip it.
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !pick(name.trim_end()) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("schedstat")) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

async fn read_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    addr_tx: tokio::sync::oneshot::Sender<SocketAddr>,
) {
    let mut addr_tx = Some(addr_tx);
    let mut reader = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if let Some(addr) = admin_addr(&line) {
            if let Some(tx) = addr_tx.take() {
                let _ = tx.send(addr);
            }
        }
        let mut tail = tail.lock().expect("never poisoned");
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn lines(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().expect("never poisoned");
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// The address in an `admin_addr=...` log field.
fn admin_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("admin_addr=")? + "admin_addr=".len();
    line[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_admin_address_in_plain_and_json_logs() {
        let plain = "2026-01-01T00:00:00Z  INFO warren_common::admin: admin server listening admin_addr=127.0.0.1:4321";
        assert_eq!(admin_addr(plain), Some("127.0.0.1:4321".parse().unwrap()));
        assert_eq!(
            admin_addr("admin server listening admin_addr=127.0.0.1:9 more"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(admin_addr("nothing here"), None);
    }
}
