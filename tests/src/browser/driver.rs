//! The chromedriver process a [`Browser`](super::Browser) talks to: Chromium and chromedriver
//! found on the machine, chromedriver started on a free port in a process group of its own
//! (with its log in the test's directory), and stopped, with every Chromium process it
//! started, when dropped; the capabilities Chromium is started with, and chromedriver's own
//! command for the browser's console log.

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Overrides the Chromium binary (default: `chromium`, `chromium-browser` or `google-chrome`
/// on `PATH`).
pub const CHROMIUM_VAR: &str = "WARREN_CHROMIUM";
/// Overrides the chromedriver binary (default: `chromedriver` on `PATH`).
pub const CHROMEDRIVER_VAR: &str = "WARREN_CHROMEDRIVER";

/// How long chromedriver has to answer `GET /status` once started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The two programs a browser test needs.
pub struct Tools {
    /// The browser.
    pub chromium: PathBuf,
    /// Its WebDriver server.
    pub chromedriver: PathBuf,
}

impl Tools {
    /// Finds Chromium and chromedriver, or says which is missing and how to install it.
    pub fn find() -> Result<Tools, String> {
        let chromium = program(
            CHROMIUM_VAR,
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let chromedriver = program(CHROMEDRIVER_VAR, &["chromedriver"]);
        match (chromium, chromedriver) {
            (Ok(chromium), Ok(chromedriver)) => Ok(Tools {
                chromium,
                chromedriver,
            }),
            (chromium, chromedriver) => {
                let missing: Vec<String> = [chromium, chromedriver]
                    .into_iter()
                    .filter_map(Result::err)
                    .collect();
                Err(format!(
                    "{}; scripts/test installs Debian's chromium and chromium-driver \
                     (apt-get install chromium chromium-driver)",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// The program the environment variable `var` names, else the first of `names` on `PATH`;
/// or why there is none.
fn program(var: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("{var}={} is not a file", path.display())),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| format!("no {} on PATH (or set {var})", names.join(" or ")))
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
    /// The WebDriver session to end on drop (so Chromium quits before the kill).
    pub session: Option<String>,
    stopped: bool,
}

impl Driver {
    /// Starts `chromedriver` on a free port, logging to `dir/chromedriver.log`, and waits
    /// until it answers. A port found free can be taken before chromedriver binds it (it then
    /// exits at once): the start is tried again on other ports, up to three times.
    pub async fn start(chromedriver: &Path, dir: &Path) -> Driver {
        let log = dir.join("chromedriver.log");
        for attempt in 1..=3 {
            let mut driver = Driver::spawn(chromedriver, &log);
            if driver.wait_ready().await {
                return driver;
            }
            eprintln!(
                "chromedriver did not answer on port {} (attempt {attempt} of 3)",
                driver.port
            );
        }
        panic!(
            "chromedriver ({}) did not start; its log ({}):\n{}",
            chromedriver.display(),
            log.display(),
            tail(&log)
        );
    }

    fn spawn(chromedriver: &Path, log: &Path) -> Driver {
        let port = free_port();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the test directory is writable");
        let err = file.try_clone().expect("the log file handle can be cloned");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .args(["--log-level=INFO", "--enable-chrome-logs"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            // Its own process group: the drop kills Chromium with it, whatever state it is in.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", chromedriver.display()));
        Driver {
            child,
            port,
            log: log.to_owned(),
            session: None,
            stopped: false,
        }
    }

    /// Polls `GET /status` until chromedriver says it is ready; false if it exited or did not
    /// answer within [`START_TIMEOUT`].
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if status_ready(&self.addr()).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The WebDriver URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The end of chromedriver's log (with Chromium's own lines), for a failure message.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Ends the session with a blocking `DELETE /session/ID` (a drop cannot wait for the
    /// WebDriver client): chromedriver then quits Chromium cleanly.
    fn end_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(self.addr()) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr()
        );
        // chromedriver answers once Chromium has quit, and keeps the connection open: the
        // answer's first bytes are enough.
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read(&mut [0; 512]);
        }
    }

    /// Ends the session, then kills chromedriver's process group: chromedriver and whatever
    /// is left of Chromium. Does nothing the second time.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.end_session();
        // The group's id is chromedriver's pid, not reused before the wait below reaps it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether chromedriver at `addr` answers `GET /status` with `"ready":true` (within 2 s). It
/// keeps connections open, whatever `Connection: close` says: the answer is read until it
/// says ready, not to the end.
async fn status_ready(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let (mut seen, mut chunk) = (Vec::new(), [0; 1024]);
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return Some(false);
            }
            seen.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&seen).contains("\"ready\":true") {
                return Some(true);
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The last 40 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Headless Chromium with a private profile, the console log kept, nothing shared with the
/// machine (no sandbox: tests may run as root in a container, where it cannot start).
pub fn capabilities(chromium: &Path, profile: &Path) -> Capabilities {
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--window-size={},{}", super::VIEWPORT.0, super::VIEWPORT.1),
        format!("--user-data-dir={}", profile.display()),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
    ];
    let mut capabilities = Capabilities::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    capabilities
}

/// chromedriver's `POST /session/ID/se/log` for the `browser` log: the entries since the
/// last call.
#[derive(Debug)]
pub struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
