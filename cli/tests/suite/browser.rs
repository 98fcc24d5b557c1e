//! The browser harness (`warren_tests::Browser`) in headless Chromium: a page Warren serves
//! today (`warren-producer serve`'s `/healthz` and `/metrics`) read as a person sees it, with
//! its screenshot in the build directory; and the helpers a console test uses (fill, click,
//! read, run a script, read the console) on a page of the test's own.
//!
//! Every test here has `browser` in its name: nextest runs them one at a time
//! (`.config/nextest.toml`).

use crate::binary;
use crate::http_ingest::support::listening;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use warren_tests::{
    amqp_url, http_get, screenshot_dir, unique_queue, wait_until, Browser, VIEWPORT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_shows_what_warren_producer_serve_answers() {
    let Some(browser) = Browser::start_or_skip("browser_serve").await else {
        return;
    };
    let queue = unique_queue("browser");
    let mut serve = tokio::process::Command::new(binary("warren-producer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--queue", &queue])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("warren-producer serve starts");
    let (_lines, addr) = listening(&mut serve, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "the server to be ready", || {
        let addr = addr.clone();
        async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))) }
    })
    .await;

    browser.goto(&format!("http://{addr}/healthz")).await;
    assert_eq!(browser.text("body").await, "ok");

    // The one visit above is on the metrics page, as text the browser shows.
    browser.goto(&format!("http://{addr}/metrics")).await;
    browser
        .wait_for_text("# TYPE warren_http_requests_total counter")
        .await;
    let shown = browser.page_text().await;
    assert!(
        shown
            .lines()
            .any(|l| l == r#"warren_http_requests_total{route="/healthz",status="200"} 1"#),
        "the metrics page shows one /healthz request:\n{shown}"
    );
    assert_eq!(browser.js_errors().await.len(), 0);

    let png = browser.screenshot("browser-harness-metrics").await;
    assert_eq!(png, screenshot_dir().join("browser-harness-metrics.png"));
    assert_in_build_directory(&png);
    assert_eq!(png_size(&png), VIEWPORT, "the page's area, 1280x900");

    drop(browser);
    let _ = serve.kill().await;
    warren_tests::delete_queues(&warren_tests::raw_connection().await, &queue).await;
}

/// A form that greets whoever is named, logs it to the console and sets `window.__greeted`.
const FORM: &str = r#"<!doctype html>
<title>form</title>
<input id="name"> <button id="greet" onclick="greet()">greet</button>
<p id="greeting"></p>
<script>
function greet() {
  const name = document.getElementById("name").value;
  setTimeout(() => {
    document.getElementById("greeting").textContent = "hello " + name;
    console.error("greeted " + name);
    window.__greeted = name;
  }, 200);
}
</script>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_fills_clicks_reads_and_runs_scripts() {
    let Some(browser) = Browser::start_or_skip("browser_helpers").await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("warren-{}", unique_queue("browser-form")));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let page = dir.join("form.html");
    std::fs::write(&page, FORM).expect("the page is written");

    browser.goto(&format!("file://{}", page.display())).await;
    assert_eq!(
        browser.execute("return window.__greeted", vec![]).await,
        serde_json::Value::Null
    );
    browser.fill("#name", "first").await;
    browser.fill("#name", "<b>Warren</b>").await;
    browser.click("#greet").await;
    // Set 200 ms after the click: the wait, not luck, finds it.
    browser.wait_for_text("hello <b>Warren</b>").await;
    assert_eq!(browser.text("#greeting").await, "hello <b>Warren</b>");
    assert_eq!(
        browser.execute("return window.__greeted", vec![]).await,
        "<b>Warren</b>"
    );
    let args = vec![serde_json::json!(20), serde_json::json!(22)];
    assert_eq!(
        browser
            .execute("return arguments[0] + arguments[1]", args)
            .await,
        42
    );
    let errors: Vec<String> = browser
        .js_errors()
        .await
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Chromium quotes a logged string as JSON (`"greeted \u003Cb>Warren..."`).
    assert!(
        errors[0].contains("greeted") && errors[0].contains("Warren"),
        "{errors:?}"
    );

    drop(browser);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A screenshot is in the build directory (cargo's, marked by `CACHEDIR.TAG`), never in the
/// tracked tree.
fn assert_in_build_directory(path: &Path) {
    assert!(path.is_file(), "{} is written", path.display());
    assert!(
        path.ancestors()
            .any(|dir| dir.join("CACHEDIR.TAG").is_file()),
        "{} is under cargo's target directory",
        path.display()
    );
}

/// Width and height of a PNG file (its IHDR chunk).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("the PNG is readable");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is a PNG",
        path.display()
    );
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (word(16), word(20))
}
