//! Every page of the console as an operator reads it after a few tasks ran: the overview's
//! queue row against the broker, the live worker, the tasks listed and found by id, a task's
//! payload, result and timeline, the queue's dead letters; a screenshot of each.

use super::{column, Console};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_browser_pages_show_what_the_broker_and_the_index_hold() {
    let Some(console) = Console::start("console-pages").await else {
        return;
    };
    let worker = console.names.worker().await;
    let greeting = json!({"greeting": "hello", "to": ["Ada", "Grace"], "count": 2});
    let echo = console.publish("demo.echo", greeting.clone()).await;
    let echo_other = console.publish("demo.echo", json!({"n": 7})).await;
    let flaky = console
        .publish("demo.flaky", json!({"fail_times": 1}))
        .await;
    let mut unknown = Vec::new();
    for month in [1, 2] {
        let payload = json!({ "month": month });
        unknown.push(console.publish("reports.monthly", payload).await);
    }
    for id in [&echo, &echo_other, &flaky] {
        console.wait_for_state(id, "succeeded").await;
    }
    for id in &unknown {
        console.wait_for_state(id, "dead_lettered").await;
    }
    console.wait_for_dead_letters(2).await;

    console.log_in(Some("console-login")).await;
    overview(&console).await;
    workers(&console, &echo).await;
    tasks(&console, [&echo, &echo_other, &flaky], &unknown).await;
    echo_page(&console, &echo, &greeting).await;
    flaky_page(&console, &flaky).await;
    queue_page(&console, &unknown).await;

    worker.stop().await;
    console.finish().await;
}

/// The queue's row shows the broker's dead letters and consumers; one live worker.
async fn overview(console: &Console) {
    let queue = &console.names.queue;
    console.visit("/console", "table#queues").await;
    let broker = console.broker(queue).await;
    let dead = console.broker(&console.dead_letter_queue()).await.ready;
    assert_eq!(dead, 2, "the two unknown tasks are dead letters");
    let row = format!("#queues tr[data-queue='{queue}']");
    console
        .wait_for_exact(&format!("{row} td.dead"), &dead.to_string())
        .await;
    console
        .wait_for_exact(
            &format!("{row} td.consumers"),
            &broker.consumers.to_string(),
        )
        .await;
    console
        .wait_for_exact(&format!("{row} td.ready"), &broker.ready.to_string())
        .await;
    console.wait_for_exact("#card-workers .value", "1").await;
    // What stands out: the dead letters gained, and how many the broker still holds.
    console
        .browser
        .wait_for_text(&format!(
            "{queue} gained 2 dead letters in the last 5 minutes (2 in its dead-letter queue now)."
        ))
        .await;
    console.browser.screenshot("console-overview").await;
    console.assert_no_js_error().await;
}

/// The workers page lists the worker the index says ran the task.
async fn workers(console: &Console, ran: &str) {
    let status = console.status(ran).await.expect("the task is indexed");
    let worker = status["worker"].as_str().expect("a worker id").to_owned();
    console
        .visit("/console/workers", "table#live-workers")
        .await;
    assert_eq!(
        column(&console.browser, "#live-workers tbody td.id").await,
        [worker]
    );
    console.browser.screenshot("console-workers").await;
    console.assert_no_js_error().await;
}

/// The tasks page lists every task published; the search box finds one by id.
async fn tasks(console: &Console, succeeded: [&String; 3], dead: &[String]) {
    console.visit("/console/tasks", "table#tasks").await;
    let listed: BTreeSet<String> = column(&console.browser, "#tasks tbody td.id")
        .await
        .into_iter()
        .collect();
    let published: BTreeSet<String> = succeeded.into_iter().chain(dead).cloned().collect();
    assert_eq!(listed, published);
    console.browser.screenshot("console-tasks").await;

    let id = succeeded[0];
    console.browser.fill("form.search input[name=id]", id).await;
    console
        .browser
        .click("form.search button[type=submit]")
        .await;
    console.wait_for_exact("#task-id", id).await;
    console.assert_no_js_error().await;
}

/// demo.echo's page: its payload as pretty JSON, and the same as its result.
async fn echo_page(console: &Console, id: &str, payload: &Value) {
    console
        .visit(&format!("/console/tasks/{id}"), "#payload")
        .await;
    let pretty = serde_json::to_string_pretty(payload).unwrap();
    assert_eq!(console.browser.text("#state").await, "succeeded");
    assert_eq!(console.browser.text("#payload").await, pretty);
    assert_eq!(console.browser.text("#result").await, pretty);
    console.assert_no_js_error().await;
}

/// demo.flaky's page: published, retrying with its error, succeeded. (Its attempts end on
/// the handler's first poll, so they record no `started`: docs/wire-format.md.)
async fn flaky_page(console: &Console, id: &str) {
    console
        .visit(&format!("/console/tasks/{id}"), "#timeline")
        .await;
    assert_eq!(console.browser.text("#state").await, "succeeded");
    assert_eq!(
        column(&console.browser, "#timeline tbody td:nth-child(2) .state").await,
        ["published", "retrying", "succeeded"]
    );
    assert_eq!(
        column(&console.browser, "#timeline tbody td:nth-child(6)").await,
        ["", "error: flaky failure 1 of 1", ""]
    );
    assert_eq!(
        column(&console.browser, "#timeline tbody td:nth-child(3)").await,
        ["1", "1", "2"]
    );
    console.browser.screenshot("console-task").await;
    console.assert_no_js_error().await;
}

/// The queue page lists exactly the dead letters the broker holds.
async fn queue_page(console: &Console, dead: &[String]) {
    let queue = &console.names.queue;
    console
        .visit(&format!("/console/queues/{queue}"), "table#dead-letters")
        .await;
    console.wait_for_exact("#card-dead .value", "2").await;
    let listed: BTreeSet<String> = column(&console.browser, "#dead-letters tbody td.id")
        .await
        .into_iter()
        .collect();
    assert_eq!(listed, dead.iter().cloned().collect());
    let reasons = column(&console.browser, "#dead-letters tbody td:nth-child(4)").await;
    assert_eq!(
        reasons,
        ["unknown_task: no handler for task `reports.monthly`"; 2]
    );
    console.browser.screenshot("console-queue").await;
    console.assert_no_js_error().await;
}
