//! The console's actions on a task and a queue, clicked and confirmed in the browser:
//! cancelling a running task frees its worker and leaves nothing of it in the broker;
//! pausing a queue takes its consumers away until it is resumed.

use super::Console;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_browser_cancels_a_running_task() {
    let Some(console) = Console::start("console-cancel").await else {
        return;
    };
    // One task at a time: the next task runs only once the cancelled one let go.
    let worker = console.names.worker_of(1).await;
    console.log_in(None).await;
    let sleeper = console.publish("demo.sleep", json!({"ms": 600_000})).await;
    console.wait_for_state(&sleeper, "running").await;

    let page = format!("/console/tasks/{sleeper}");
    console.visit(&page, "#state").await;
    console.wait_for_exact("#state", "running").await;
    console.browser.click("#cancel").await;
    console.browser.wait_for("button#confirm").await;
    console.browser.wait_for_text(&sleeper).await;
    console.browser.click("button#confirm").await;
    console.browser.wait_for("p.flash").await;
    let flash = console.browser.text("p.flash").await;
    assert!(
        flash.starts_with(&format!("Cancelled task {sleeper}")),
        "{flash}"
    );
    assert!(console.browser.url().await.contains(&page));
    // The page's live part refreshes until the worker has recorded it.
    console.wait_for_exact("#state", "cancelled").await;
    console.wait_for_state(&sleeper, "cancelled").await;
    console.assert_no_js_error().await;

    let queue = console.broker(&console.names.queue).await;
    assert_eq!(
        queue.ready, 0,
        "the cancelled task is not back in the queue"
    );
    let dead = console.broker(&console.dead_letter_queue()).await;
    assert_eq!(dead.ready, 0, "nor dead-lettered");
    let echo = console
        .publish("demo.echo", json!({"after": "cancel"}))
        .await;
    let status = console.wait_for_state(&echo, "succeeded").await;
    assert_eq!(status["result"], json!({"after": "cancel"}));

    worker.stop().await;
    console.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_browser_pauses_and_resumes_a_queue() {
    let Some(console) = Console::start("console-pause").await else {
        return;
    };
    let worker = console.names.worker().await;
    let queue = console.names.queue.clone();
    let consumers = console.broker(&queue).await.consumers;
    assert!(consumers >= 1, "the worker consumes {queue}");
    console.log_in(None).await;
    let page = format!("/console/queues/{queue}");
    console.visit(&page, "#card-consumers").await;
    console
        .wait_for_exact("#card-consumers .value", &consumers.to_string())
        .await;

    confirm(&console, "#pause", &format!("Paused `{queue}`")).await;
    console.wait_for_exact("#card-consumers .value", "0").await;
    assert_eq!(console.broker(&queue).await.consumers, 0);
    let held = console.publish("demo.echo", json!({"held": true})).await;
    console.wait_for_state(&held, "published").await;
    console.wait_for_exact("#card-ready .value", "1").await;
    let broker = console.broker(&queue).await;
    assert_eq!((broker.ready, broker.consumers), (1, 0), "{queue} holds it");

    confirm(&console, "#resume", &format!("Resumed `{queue}`")).await;
    console.wait_for_state(&held, "succeeded").await;
    console.wait_for_exact("#card-ready .value", "0").await;
    console
        .wait_for_exact("#card-consumers .value", &consumers.to_string())
        .await;
    let broker = console.broker(&queue).await;
    assert_eq!((broker.ready, broker.consumers), (0, consumers));
    console.assert_no_js_error().await;

    worker.stop().await;
    console.finish().await;
}

/// Clicks the action `button`, confirms it, and checks the page it returns to says `done`.
async fn confirm(console: &Console, button: &str, done: &str) {
    console.browser.click(button).await;
    console.browser.click("button#confirm").await;
    console.browser.wait_for("p.flash").await;
    let flash = console.browser.text("p.flash").await;
    assert!(flash.starts_with(done), "{flash}");
    console.assert_no_js_error().await;
}
