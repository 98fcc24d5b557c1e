//! Messages that are not valid tasks, run through the real `warren-worker`: each is
//! dead-lettered with its reason, and its log line and metrics carry what the message did
//! carry (its id, task name and attempt), with the task label bounded to registered names.

use crate::WorkerProcess;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_common::{headers, text_value};
use warren_tests::*;

/// One hand-made message and what the worker must make of it.
struct Case {
    id: &'static str,
    task: String,
    content_type: &'static str,
    headers: Vec<(&'static str, AMQPValue)>,
    kind: &'static str,
    reason: &'static str,
    /// The `attempt` its log line shows (none when the attempt header itself is invalid).
    attempt: Option<u64>,
}

fn cases(stranger: &str) -> Vec<Case> {
    let case = |id, task: &str, content_type, headers, kind, reason, attempt| Case {
        id,
        task: task.to_owned(),
        content_type,
        headers,
        kind,
        reason,
        attempt,
    };
    vec![
        case(
            "plus-sign",
            "demo.echo",
            "application/json",
            vec![
                (headers::ATTEMPT, text_value("4")),
                (headers::MAX_ATTEMPTS, text_value("+3")),
            ],
            "invalid_message",
            r#"header `x-warren-max-attempts` is invalid: "+3" is not a decimal integer"#,
            Some(4),
        ),
        case(
            "negative-attempt",
            "demo.echo",
            "application/json",
            vec![(headers::ATTEMPT, text_value("-1"))],
            "invalid_message",
            r#"header `x-warren-attempt` is invalid: "-1" is negative"#,
            None,
        ),
        case(
            "xml",
            "demo.echo",
            "text/xml",
            vec![(headers::ATTEMPT, AMQPValue::LongInt(2))],
            "unsupported_content_type",
            "unsupported content type \"text/xml\"",
            Some(2),
        ),
        case(
            "overflow",
            stranger,
            "application/json",
            vec![(headers::TIMEOUT_MS, text_value("18446744073709551616"))],
            "invalid_message",
            "\"18446744073709551616\" is too large (the largest is 18446744073709551615)",
            Some(1),
        ),
    ]
}

async fn publish(channel: &lapin::Channel, queue: &str, case: &Case) {
    let mut table = FieldTable::default();
    for (name, value) in &case.headers {
        table.insert((*name).into(), value.clone());
    }
    let props = BasicProperties::default()
        .with_type(case.task.as_str().into())
        .with_message_id(case.id.into())
        .with_content_type(case.content_type.into())
        .with_delivery_mode(2)
        .with_headers(table);
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish("".into(), queue.into(), options, b"{}", props)
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert_eq!(confirm, Confirmation::Ack(None), "{} queued", case.id);
}

/// The `span` of every "task dead-lettered" JSON log line, by task id.
fn dead_letter_spans(worker: &WorkerProcess) -> BTreeMap<String, Value> {
    let lines = worker.lines.lock().expect("not poisoned").clone();
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "task dead-lettered")
        .map(|line| {
            let id = line["span"]["task_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (id, line["span"].clone())
        })
        .collect()
}

#[tokio::test]
async fn invalid_messages_are_logged_and_counted_with_what_they_carried() {
    let queue = unique_queue("invalid");
    let args = ["--queue", queue.as_str(), "--log-format", "json"];
    let worker = WorkerProcess::start(&args, &amqp_url()).await;
    wait_until(
        Duration::from_secs(20),
        "the worker to be ready",
        || async { worker.readiness().await == 200 },
    )
    .await;
    // A name no handler has, with an escape sequence a terminal would obey.
    let stranger = format!("evil.{}\u{1b}[2J", uuid::Uuid::new_v4().simple());
    let cases = cases(&stranger);
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for case in &cases {
        publish(&channel, &queue, case).await;
    }

    let dead = drain_queue(&conn, &format!("{queue}.dead"), 4, Duration::from_secs(20))
        .await
        .unwrap();
    for (props, _) in &dead {
        let id = props.message_id().as_ref().unwrap().as_str();
        let case = cases.iter().find(|c| c.id == id).expect("a published id");
        assert_eq!(
            header(props, headers::DEAD_KIND).as_deref(),
            Some(case.kind)
        );
        let reason = header(props, headers::DEAD_REASON).unwrap();
        assert!(reason.contains(case.reason), "{id}: {reason}");
    }

    wait_until(
        Duration::from_secs(10),
        "four dead-letter log lines",
        || {
            let n = dead_letter_spans(&worker).len();
            async move { n == 4 }
        },
    )
    .await;
    let spans = dead_letter_spans(&worker);
    for case in &cases {
        let span = &spans[case.id];
        assert_eq!(span["task"], case.task.as_str(), "{}: {span}", case.id);
        assert_eq!(
            span["attempt"].as_u64(),
            case.attempt,
            "{}: {span}",
            case.id
        );
        assert_eq!(span["queue"], queue.as_str());
    }

    // Counted under the registered task they name; a name this worker does not know is
    // `<unknown>` and never becomes a series of its own. A dead letter is logged when it is
    // published and counted just after: wait for the four counts.
    let queue_label = [("queue", queue.as_str())];
    wait_until(
        Duration::from_secs(10),
        "four dead letters counted",
        || async {
            let metrics = worker.scrape().await;
            sample(&metrics, "warren_tasks_dead_lettered_total", &queue_label) == 4.0
        },
    )
    .await;
    let metrics = worker.scrape().await;
    let dead_lettered = |task: &str, reason: &str| {
        let labels = [
            ("queue", queue.as_str()),
            ("task", task),
            ("reason", reason),
        ];
        sample(&metrics, "warren_tasks_dead_lettered_total", &labels)
    };
    assert_eq!(dead_lettered("demo.echo", "invalid_message"), 2.0);
    assert_eq!(dead_lettered("demo.echo", "unsupported_content_type"), 1.0);
    assert_eq!(dead_lettered("<unknown>", "invalid_message"), 1.0);
    let received = |task| {
        let labels = [("queue", queue.as_str()), ("task", task)];
        sample(&metrics, "warren_tasks_received_total", &labels)
    };
    assert_eq!((received("demo.echo"), received("<unknown>")), (3.0, 1.0));
    assert!(
        metrics.keys().all(|series| !series.contains("evil.")),
        "a task name from the wire became a label"
    );
    delete_queues(&conn, &queue).await;
}
