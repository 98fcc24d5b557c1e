//! Replaying and purging dead letters from a queue's page: a ticked dead letter is replayed
//! and runs again (its task succeeds), and "Purge all matching" with a reason kind removes
//! exactly the dead letters of that kind from the broker, the others staying.

use super::{column, Console};
use serde_json::json;
use std::collections::BTreeSet;
use warren_producer::TaskOptions;
use warren_tests::{raw_connection, take_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_browser_replays_and_purges_dead_letters() {
    let Some(console) = Console::start("console-replay").await else {
        return;
    };
    let worker = console.names.worker().await;
    // One attempt: demo.flaky fails it and it is dead-lettered; replayed, it is attempt 2,
    // which succeeds.
    let once = || TaskOptions::new().max_attempts(1);
    let mut flaky = Vec::new();
    for _ in 0..2 {
        let payload = json!({"fail_times": 1});
        flaky.push(console.publish_with("demo.flaky", payload, once()).await);
    }
    let mut unknown = Vec::new();
    for n in 0..3 {
        let payload = json!({ "n": n });
        unknown.push(console.publish("billing.close", payload).await);
    }
    for id in flaky.iter().chain(&unknown) {
        console.wait_for_state(id, "dead_lettered").await;
    }
    console.wait_for_dead_letters(5).await;

    console.log_in(None).await;
    let page = format!("/console/queues/{}", console.names.queue);
    console.visit(&page, "table#dead-letters").await;
    console.wait_for_exact("#card-dead .value", "5").await;
    let listed: BTreeSet<String> = column(&console.browser, "#dead-letters tbody td.id")
        .await
        .into_iter()
        .collect();
    assert_eq!(listed, flaky.iter().chain(&unknown).cloned().collect());

    // Tick the first flaky dead letter, replay it.
    let replayed = &flaky[0];
    let tick = format!("#dead-letters tr[data-id='{replayed}'] input[type=checkbox]");
    console.browser.click(&tick).await;
    console.browser.click("#replay-selected").await;
    console.browser.wait_for("button#confirm").await;
    console
        .browser
        .wait_for_text(&format!("dead letter {replayed}"))
        .await;
    console.browser.screenshot("console-confirm").await;
    console.browser.click("button#confirm").await;
    let queue = &console.names.queue;
    console
        .wait_for_exact(
            "#job-done",
            &format!("Done: replayed 1 dead letter of `{queue}`"),
        )
        .await;
    console.wait_for_state(replayed, "succeeded").await;
    assert_eq!(console.broker(&console.dead_letter_queue()).await.ready, 4);
    console.wait_for_exact("#card-dead .value", "4").await;
    console.assert_no_js_error().await;

    // Filter by the unknown tasks' reason kind, purge all that match.
    console
        .browser
        .click("#dead-filters select[name=kind] option[value=unknown_task]")
        .await;
    console
        .browser
        .click("#dead-filters button[type=submit]")
        .await;
    console
        .browser
        .wait_for("#dead-filters option[value=unknown_task][selected]")
        .await;
    let shown = column(&console.browser, "#dead-letters tbody td.id").await;
    assert_eq!(
        shown.into_iter().collect::<BTreeSet<_>>(),
        unknown.iter().cloned().collect()
    );
    console.browser.click("#purge-all").await;
    console
        .browser
        .wait_for_text("every dead letter of reason kind `unknown_task`")
        .await;
    console.browser.click("button#confirm").await;
    console
        .wait_for_exact(
            "#job-done",
            &format!("Done: purged 3 dead letters of `{queue}`"),
        )
        .await;
    console.assert_no_js_error().await;

    // Only the other flaky dead letter is left in the broker.
    let conn = raw_connection().await;
    let left = take_all(&conn, &console.dead_letter_queue()).await;
    let ids: Vec<String> = left
        .iter()
        .filter_map(|(props, _)| props.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    assert_eq!(ids, [flaky[1].clone()]);
    let _ = conn.close(200, "".into()).await;

    worker.stop().await;
    console.finish().await;
}
