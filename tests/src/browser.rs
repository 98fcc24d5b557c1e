//! A real browser for tests of what Warren serves to people (the web console): headless
//! Chromium driven over WebDriver by its own chromedriver, with the few things a test does
//! with a page (go to it, wait for an element or a text, read, click, fill, run a script, read
//! the console, take a screenshot). Every wait is bounded and fails naming what the page
//! showed instead.
//!
//! Browsers are heavy on a small machine, so they run one at a time: nextest runs every test
//! whose name contains `browser` in a test group of one thread (`.config/nextest.toml`), as
//! each test is a process of its own there; under `cargo test`, where tests are threads of one
//! process, [`Browser::start`] waits for the previous browser of the process to be dropped.
//!
//! Without Chromium or chromedriver, [`Browser::start_or_skip`] skips the test (or fails it
//! under strict mode, see [`skip_or_fail`](crate::skip_or_fail)); `scripts/test` installs them.

mod driver;

pub use driver::{CHROMEDRIVER_VAR, CHROMIUM_VAR};

use driver::{capabilities, BrowserLog, Driver, Tools};
use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the helpers wait for an element or a text before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long Chromium has to start (a loaded 2-core machine takes seconds).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(90);

/// The size of the page's area (viewport) every page is shown and screenshot in.
pub const VIEWPORT: (u32, u32) = (1280, 900);

/// One browser at a time in this process (see the module's doc).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium with its own chromedriver, profile and temporary directory. Dropping
/// it ends the session and kills chromedriver and Chromium.
pub struct Browser {
    client: Client,
    /// Stopped (session ended, chromedriver and Chromium killed) before `dir` is removed.
    driver: Driver,
    dir: PathBuf,
    log: std::sync::Mutex<Vec<LogEntry>>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// A line of the browser's console: `console.log` calls, uncaught errors, refused scripts.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogEntry {
    /// `SEVERE` (errors), `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// The text, prefixed by where it came from (a URL and line); a string logged with
    /// `console.*` is quoted as JSON (`"a \u003Cb>"` for `a <b>`).
    pub message: String,
    /// `javascript`, `console-api`, `network`, `security`...
    #[serde(default)]
    pub source: Option<String>,
}

impl Browser {
    /// Starts a browser for the test `label`, or returns `None` after
    /// [`skip_or_fail`](crate::skip_or_fail) when Chromium or chromedriver is not installed.
    pub async fn start_or_skip(label: &str) -> Option<Browser> {
        match Tools::find() {
            Ok(tools) => Some(Browser::launch(label, tools).await),
            Err(why) => {
                crate::skip_or_fail(label, &why);
                None
            }
        }
    }

    /// Starts a browser for the test `label`; panics when Chromium or chromedriver is missing.
    pub async fn start(label: &str) -> Browser {
        let tools = Tools::find().unwrap_or_else(|why| panic!("no browser for {label}: {why}"));
        Browser::launch(label, tools).await
    }

    async fn launch(label: &str, tools: Tools) -> Browser {
        let turn = TURN.lock().await;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("warren-browser-{label}-{suffix}"));
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        let mut driver = Driver::start(&tools.chromedriver, &dir).await;
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities(&tools.chromium, &dir.join("profile")));
        let url = driver.url();
        let connect = tokio::time::timeout(LAUNCH_TIMEOUT, builder.connect(&url)).await;
        let client = match connect {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "Chromium ({}) did not start under chromedriver: {e}; its log:\n{}",
                tools.chromium.display(),
                driver.log_tail()
            ),
            Err(_) => panic!(
                "Chromium ({}) did not start under chromedriver within {LAUNCH_TIMEOUT:?}; \
                 its log:\n{}",
                tools.chromium.display(),
                driver.log_tail()
            ),
        };
        driver.session = client.session_id().await.ok().flatten();
        let browser = Browser {
            client,
            driver,
            dir,
            log: std::sync::Mutex::new(Vec::new()),
            _turn: turn,
        };
        browser.fit_viewport().await;
        browser
    }

    /// Grows the window so that the page itself (the viewport, what a screenshot shows) is
    /// [`VIEWPORT`]: headless Chromium counts the browser's own bars in `--window-size`.
    async fn fit_viewport(&self) {
        let script = "return [outerWidth - innerWidth, outerHeight - innerHeight];";
        let bars = self.execute(script, vec![]).await;
        let bar = |i: usize| {
            bars[i]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        let (width, height) = VIEWPORT;
        self.client
            .set_window_size(width + bar(0), height + bar(1))
            .await
            .unwrap_or_else(|e| panic!("the browser's window cannot be resized: {e}"));
    }

    /// The WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Loads `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("the browser cannot load {url}: {e}"));
    }

    /// The URL shown now.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(String::from)
            .unwrap_or_else(|e| panic!("the browser has no current URL: {e}"))
    }

    /// Waits (up to [`WAIT`]) for an element matching the CSS selector `css`.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.retry(&format!("an element matching `{css}`"), || async {
            self.client.find(Locator::Css(css)).await
        })
        .await
    }

    /// Waits (up to [`WAIT`]) until the page's visible text contains `text`.
    pub async fn wait_for_text(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.page_text().await.contains(text) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for the text {text:?}; {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the first element matching `css` (waiting for it).
    pub async fn text(&self, css: &str) -> String {
        self.retry(&format!("the text of `{css}`"), || async {
            self.client.find(Locator::Css(css)).await?.text().await
        })
        .await
    }

    /// The visible text of the whole page (`document.body.innerText`).
    pub async fn page_text(&self) -> String {
        let script = "return document.body ? document.body.innerText : '';";
        match self.execute(script, vec![]).await {
            Value::String(text) => text,
            _ => String::new(),
        }
    }

    /// Clicks the first element matching `css` (waiting for it), then lets a navigation it
    /// starts load.
    pub async fn click(&self, css: &str) {
        self.retry(&format!("a click on `{css}`"), || async {
            self.client.find(Locator::Css(css)).await?.click().await
        })
        .await;
    }

    /// Replaces the value of the form field matching `css` (waiting for it) with `value`.
    pub async fn fill(&self, css: &str, value: &str) {
        self.retry(&format!("filling `{css}`"), || async {
            let field = self.client.find(Locator::Css(css)).await?;
            field.clear().await?;
            field.send_keys(value).await
        })
        .await;
    }

    /// Runs `script` (a function body: `return` gives its value) with `arguments` = `args`.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}\n{script}"))
    }

    /// Every line of the browser's console since the browser started (Chromium's
    /// `goog:loggingPrefs`): `console.*` calls, uncaught exceptions, scripts refused by the
    /// Content-Security-Policy, failed loads.
    pub async fn console_log(&self) -> Vec<LogEntry> {
        let fresh = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|e| panic!("chromedriver does not give the browser's log: {e}"));
        let fresh: Vec<LogEntry> = serde_json::from_value(fresh)
            .unwrap_or_else(|e| panic!("the browser's log is not a list of entries: {e}"));
        let mut log = self.log.lock().expect("no test panicked holding the log");
        log.extend(fresh);
        log.clone()
    }

    /// The page's errors since the browser started: uncaught exceptions, `console.error`,
    /// scripts refused by the Content-Security-Policy (level `SEVERE`). Failed loads (source
    /// `network`, such as the `/favicon.ico` a browser asks every server for) are left out:
    /// they are in [`console_log`](Self::console_log).
    pub async fn js_errors(&self) -> Vec<LogEntry> {
        let mut log = self.console_log().await;
        log.retain(|entry| entry.level == "SEVERE" && entry.source.as_deref() != Some("network"));
        log
    }

    /// Saves a PNG of the window as `<target>/console-screenshots/NAME.png` (see
    /// [`screenshot_dir`]) and returns its path. `name` is a file name without extension:
    /// letters, digits, `-`, `_` and `.`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "a screenshot's name is a plain file name without extension, not {name:?}"
        );
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("the browser took no screenshot: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Runs `attempt` until it succeeds or [`WAIT`] has passed. A missing or replaced element
    /// (a page refreshing itself) is retried; another WebDriver error fails at once.
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            match attempt().await {
                Ok(value) => return value,
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if retryable(&e) => panic!(
                    "timed out after {WAIT:?} waiting for {what} ({e}); {}",
                    self.describe().await
                ),
                Err(e) => panic!("{what} failed: {e}; {}", self.describe().await),
            }
        }
    }

    /// What the page shows, for a failure message: its URL, title and visible text.
    async fn describe(&self) -> String {
        let url = self.client.current_url().await.map(String::from);
        let title = self.client.title().await.unwrap_or_default();
        let mut text = self.page_text().await;
        if text.len() > 3000 {
            let mut end = 3000;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("\n[...]");
        }
        format!(
            "the page {} titled {title:?} shows:\n{text}",
            url.unwrap_or_else(|e| format!("(no URL: {e})"))
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // On a failure the directory stays, with chromedriver's and Chromium's log.
        if std::thread::panicking() {
            eprintln!(
                "the browser's directory (chromedriver.log, profile) is kept: {}",
                self.dir.display()
            );
        }
        self.driver.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether a WebDriver error can pass by waiting: the element is not there yet, or the page
/// replaced it.
fn retryable(e: &CmdError) -> bool {
    matches!(
        e,
        CmdError::Standard(wd) if matches!(
            wd.error,
            ErrorStatus::NoSuchElement | ErrorStatus::StaleElementReference
        )
    )
}

/// Where [`Browser::screenshot`] writes: `console-screenshots/` in the build directory of the
/// running test (the nearest directory above it holding cargo's `CACHEDIR.TAG`: `target/`, or
/// `$CARGO_TARGET_DIR`), never the tracked tree. `scripts/console-screenshots` copies them
/// into `docs/console/`.
pub fn screenshot_dir() -> PathBuf {
    target_dir().join("console-screenshots")
}

fn target_dir() -> PathBuf {
    let built_in = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_owned)
    });
    built_in
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute())
        })
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        })
}
