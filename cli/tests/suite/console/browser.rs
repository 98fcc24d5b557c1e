//! The web console in a real browser (headless Chromium over WebDriver): the real broker,
//! the real `warren-producer serve --console --console-actions` with its token, workers in
//! this process running the demo tasks, and an operator who logs in through the form, reads
//! the pages and acts on them. Each test checks what a page shows against what the broker
//! (passive declares) and the index (`GET /v1/tasks/{id}`) hold, that an action changed the
//! broker's state, and that no page raised a script error. The pages' screenshots land in the
//! build directory; `scripts/console-screenshots` copies them into docs/console/.
//!
//! Every test here is named `console::browser::...`: nextest runs them one at a time
//! (`.config/nextest.toml`) and `scripts/console-screenshots` selects them.

mod actions;
mod dead_letters;
mod pages;
mod xss;

use super::{Names, Serve, TOKEN};
use serde_json::Value;
use std::time::Duration;
use warren_common::events::PublishedEvents;
use warren_common::{dead_letter_queue_name, Codec};
use warren_producer::{Publisher, TaskOptions};
use warren_tests::*;

/// How long a task may take to reach a state in the index (a loaded machine is slow).
const SETTLE: Duration = Duration::from_secs(60);

/// One test's console: its names, the server, a publisher recording `published` events
/// (with the payload's copy) and a logged-in browser.
pub(super) struct Console {
    pub(super) names: Names,
    pub(super) serve: Serve,
    pub(super) browser: Browser,
    publisher: Publisher,
    http: reqwest::Client,
}

impl Console {
    /// Starts the server with actions and a browser, or `None` (the test skips) when no
    /// browser is installed. The browser is not logged in yet.
    pub(super) async fn start(label: &str) -> Option<Console> {
        let browser = Browser::start_or_skip(label).await?;
        let names = Names::new(label);
        let serve = Serve::start(&names, &["--console-actions"]).await;
        let events = PublishedEvents::new(names.events.clone());
        let publisher = publisher(&names.queue).await.with_events(events);
        Some(Console {
            names,
            serve,
            browser,
            publisher,
            http: reqwest::Client::new(),
        })
    }

    /// Opens the console, lands on the login form, fills the token and submits it: the
    /// overview shows.
    pub(super) async fn log_in(&self, screenshot: Option<&str>) {
        self.browser.goto(&self.url("/console")).await;
        self.browser.wait_for("input#token").await;
        self.browser.fill("input#token", TOKEN).await;
        if let Some(name) = screenshot {
            self.browser.screenshot(name).await;
        }
        self.browser
            .click("form[action='/console/login'] button[type=submit]")
            .await;
        self.browser.wait_for("table#queues").await;
        self.assert_no_js_error().await;
    }

    /// The console's URL of `path`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.serve.url)
    }

    /// Loads `path`, waits for the element `css` that says it has loaded, then for the page
    /// to refresh its live part once: what a test reads next is what an operator watching
    /// the page sees, not only the first answer.
    pub(super) async fn visit(&self, path: &str, css: &str) {
        self.browser.goto(&self.url(path)).await;
        self.browser.wait_for(css).await;
        self.browser.wait_for_text("Updated ").await;
        self.browser.wait_for(css).await;
        self.assert_no_js_error().await;
    }

    /// No page visited so far raised a script error or had a script refused.
    pub(super) async fn assert_no_js_error(&self) {
        let errors = self.browser.js_errors().await;
        assert!(errors.is_empty(), "script errors: {errors:#?}");
    }

    /// Waits (bounded) until the text of `css` is `expected`: pages refresh their live part
    /// every second, so a figure catches up without a reload.
    pub(super) async fn wait_for_exact(&self, css: &str, expected: &str) {
        let mut shown = String::new();
        for _ in 0..200 {
            shown = self.browser.text(css).await;
            if shown.trim() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "`{css}` shows {shown:?}, not {expected:?}; the page:\n{}",
            self.browser.page_text().await
        );
    }

    /// Publishes `task` with the JSON `payload`: its id.
    pub(super) async fn publish(&self, task: &str, payload: Value) -> String {
        self.publish_with(task, payload, TaskOptions::new()).await
    }

    /// Publishes `task` with the JSON `payload` and `options`: its id.
    pub(super) async fn publish_with(
        &self,
        task: &str,
        payload: Value,
        options: TaskOptions,
    ) -> String {
        self.publisher
            .publish(task, &payload, &options.codec(Codec::Json))
            .await
            .unwrap_or_else(|e| panic!("{task} cannot be published: {e}"))
            .to_string()
    }

    /// The index's status of task `id` (`GET /v1/tasks/{id}` with the bearer token), or
    /// `None` while the index has no event of it.
    pub(super) async fn status(&self, id: &str) -> Option<Value> {
        let answer = self
            .http
            .get(self.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the server answers");
        if answer.status() == 404 {
            return None;
        }
        assert_eq!(answer.status(), 200, "GET /v1/tasks/{id}");
        Some(answer.json().await.expect("a JSON status"))
    }

    /// Waits until the index says task `id` is in `state`: its status.
    pub(super) async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let what = format!("task {id} to be {state} in the index");
        wait_until(SETTLE, &what, || async {
            self.status(id).await.is_some_and(|s| s["state"] == state)
        })
        .await;
        self.status(id).await.expect("the task is indexed")
    }

    /// Ready messages and consumers of `queue`, by a passive declare.
    pub(super) async fn broker(&self, queue: &str) -> warren_common::QueueState {
        let conn = raw_connection().await;
        let channel = conn.create_channel().await.expect("a channel");
        let state = warren_common::inspect_queue(&channel, queue)
            .await
            .unwrap_or_else(|e| panic!("{queue} cannot be inspected: {e}"));
        let _ = conn.close(200, "".into()).await;
        state
    }

    /// The name of the queue's dead-letter queue.
    pub(super) fn dead_letter_queue(&self) -> String {
        dead_letter_queue_name(&self.names.queue)
    }

    /// Waits until the broker's dead-letter queue holds `count` dead letters.
    pub(super) async fn wait_for_dead_letters(&self, count: u32) {
        let dlq = self.dead_letter_queue();
        let what = format!("{count} dead letters in {dlq}");
        wait_until(SETTLE, &what, || async {
            self.broker(&dlq).await.ready == count
        })
        .await;
    }

    /// Stops the server and removes what the test created.
    pub(super) async fn finish(self) {
        let Console {
            names,
            serve,
            browser,
            publisher,
            ..
        } = self;
        drop(browser);
        publisher.close().await;
        serve.stop().await;
        names.clean_up().await;
    }
}

/// The text of the table cells matching `css` in every row of `table`, top to bottom.
pub(super) async fn column(browser: &Browser, css: &str) -> Vec<String> {
    let script =
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim());";
    match browser.execute(script, vec![Value::from(css)]).await {
        Value::Array(cells) => cells
            .into_iter()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect(),
        other => panic!("`{css}` gave {other}"),
    }
}
