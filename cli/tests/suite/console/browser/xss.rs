//! Nothing a task brings is run by the console: tasks whose name, payload, result and error
//! (an unknown task's error quotes its name) carry markup that would run a script are shown
//! as text on every page, and no script ran or was refused.

use super::Console;
use serde_json::{json, Value};

/// Markup that would set `window.__xss` if a page let it through.
const SCRIPT: &str = "<script>window.__xss=1</script>";
const IMG: &str = r#"<img src=x onerror="window.__xss=2">"#;
/// What every page showing [`IMG`] shows of it, as text or in JSON (which escapes its quotes).
const IMG_TEXT: &str = "<img src=x onerror=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_browser_shows_markup_from_tasks_as_text() {
    let Some(console) = Console::start("console-xss").await else {
        return;
    };
    let worker = console.names.worker().await;
    let payload = json!({ "script": SCRIPT, "img": IMG });
    let named_script = console.publish(SCRIPT, payload.clone()).await;
    let named_img = console.publish(IMG, payload.clone()).await;
    let echo = console.publish("demo.echo", payload.clone()).await;
    console.wait_for_state(&named_script, "dead_lettered").await;
    console.wait_for_state(&named_img, "dead_lettered").await;
    let status = console.wait_for_state(&echo, "succeeded").await;
    assert_eq!(status["result"], payload, "demo.echo returns the markup");
    console.wait_for_dead_letters(2).await;

    console.log_in(None).await;
    console.visit("/console", "table#queues").await;
    assert_nothing_ran(&console, &[]).await;

    console.visit("/console/tasks", "table#tasks").await;
    assert_nothing_ran(&console, &[SCRIPT, IMG_TEXT]).await;

    for id in [&named_script, &named_img] {
        console
            .visit(&format!("/console/tasks/{id}"), "#error")
            .await;
        assert_nothing_ran(&console, &[SCRIPT, IMG_TEXT]).await;
    }
    let error = console
        .browser
        .text("#timeline tbody tr:last-child td:nth-child(6)")
        .await;
    assert_eq!(error, format!("unknown_task: no handler for task `{IMG}`"));

    console
        .visit(&format!("/console/tasks/{echo}"), "#result")
        .await;
    assert_nothing_ran(&console, &[SCRIPT, IMG_TEXT]).await;
    let result: Value = serde_json::from_str(&console.browser.text("#result").await)
        .expect("the result is shown as JSON text");
    assert_eq!(result, payload);

    let queue = &console.names.queue;
    console
        .visit(&format!("/console/queues/{queue}"), "table#dead-letters")
        .await;
    assert_nothing_ran(&console, &[SCRIPT, IMG_TEXT]).await;
    let reasons = super::column(&console.browser, "#dead-letters tbody td:nth-child(4)").await;
    assert!(
        reasons.contains(&format!("unknown_task: no handler for task `{SCRIPT}`")),
        "{reasons:?}"
    );

    worker.stop().await;
    console.finish().await;
}

/// `window.__xss` is not set, no script error or refusal was logged, and the page's text
/// shows each of `literals` as written.
async fn assert_nothing_ran(console: &Console, literals: &[&str]) {
    let set = console
        .browser
        .execute("return typeof window.__xss;", vec![])
        .await;
    assert_eq!(set, "undefined", "a script from a task ran");
    console.assert_no_js_error().await;
    let text = console.browser.page_text().await;
    for literal in literals {
        assert!(
            text.contains(literal),
            "{literal} is not shown as text:\n{text}"
        );
    }
    let injected = console
        .browser
        .execute(
            "return document.querySelectorAll('#live script, #live img').length;",
            vec![],
        )
        .await;
    assert_eq!(injected, 0, "no element was made from a task's markup");
}
