//! Payloads nested past the decoding depth limit, on a real worker: a recursive payload type
//! nested 100,000 levels deep (bincode and JSON) is dead-lettered as `undecodable` with a
//! reason naming the limit instead of overflowing the worker's stack, and the tasks behind it
//! run.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_common::{headers, Codec};
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError};

/// A payload type that contains itself.
#[derive(Debug, Serialize, Deserialize)]
enum Expr {
    Lit(i64),
    Neg(Box<Expr>),
}

impl Expr {
    /// `Neg(Neg(...Lit(value)))`, `levels` levels deep.
    fn nested(levels: usize, value: i64) -> Expr {
        (1..levels).fold(Expr::Lit(value), |e, _| Expr::Neg(Box::new(e)))
    }

    fn levels(&self) -> usize {
        let (mut levels, mut expr) = (1, self);
        while let Expr::Neg(inner) = expr {
            (levels, expr) = (levels + 1, inner);
        }
        levels
    }
}

/// `Neg(Neg(...Lit(0)))` with 100,000 Negs, written by hand: serializing it would recurse
/// as deep as decoding it.
fn too_deep(codec: Codec) -> Vec<u8> {
    const NEGS: usize = 100_000;
    match codec {
        // Variant indices as varints (Neg = 1, Lit = 0), then Lit's zero.
        Codec::Bincode => [vec![1u8; NEGS], vec![0, 0]].concat(),
        Codec::Json => format!(
            r#"{}{{"Lit":0}}{}"#,
            r#"{"Neg":"#.repeat(NEGS),
            "}".repeat(NEGS)
        )
        .into_bytes(),
    }
}

// Several runtime threads, as in the real worker: tokio's worker threads have 2 MiB stacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_nested_past_the_limit_is_dead_lettered_and_the_worker_goes_on() {
    let queue = unique_queue("nested");
    let runs = Arc::new(AtomicUsize::new(0));
    let deepest = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let (counted, seen) = (runs.clone(), deepest.clone());
    registry.register("test.expr", move |_: TaskContext, expr: Expr| {
        seen.fetch_max(expr.levels(), Ordering::SeqCst);
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TaskError>(()) }
    });
    let worker = TestWorker::start(registry, test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    let mut valid = 0;
    for codec in [Codec::Bincode, Codec::Json] {
        let options = TaskOptions {
            codec: Some(codec),
            ..TaskOptions::default()
        };
        // The deep task first, so that every valid one is behind it in the queue.
        let (mut envelope, _) = publisher
            .prepare("test.expr", &Expr::Lit(0), &options)
            .unwrap();
        let id = format!("deep-{codec:?}");
        envelope.id.clone_from(&id);
        publisher
            .publish_raw(
                "warren",
                &queue,
                &too_deep(codec),
                envelope.to_properties(),
                &id,
            )
            .await
            .unwrap();
        // Behind it: a payload exactly at the limit, and shallow ones.
        let mut payloads = vec![Expr::nested(Codec::MAX_DEPTH, 1)];
        payloads.extend((0..5).map(|i| Expr::nested(3, i)));
        for expr in &payloads {
            publisher
                .publish("test.expr", expr, &options)
                .await
                .unwrap();
            valid += 1;
        }
    }
    let conn = raw_connection().await;
    let dead = drain_queue(&conn, &format!("{queue}.dead"), 2, Duration::from_secs(20))
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the valid tasks", || {
        let n = runs.load(Ordering::SeqCst);
        async move { n == valid }
    })
    .await;
    assert_eq!(worker.health.get(), warren_common::Readiness::Ready);
    let report = worker.stop().await;
    assert_eq!(valid, 12);
    assert_eq!(runs.load(Ordering::SeqCst), 12);
    assert_eq!(deepest.load(Ordering::SeqCst), Codec::MAX_DEPTH);
    assert_eq!(report.totals.succeeded, 12);
    assert_eq!(report.totals.dead_lettered, 2);
    let mut records: Vec<_> = dead
        .iter()
        .map(|(props, body)| {
            (
                props.message_id().as_ref().unwrap().to_string(),
                header(props, headers::DEAD_KIND).unwrap(),
                header(props, headers::DEAD_REASON).unwrap(),
                header(props, headers::ORIGINAL_QUEUE).unwrap(),
                body.len(),
            )
        })
        .collect();
    records.sort();
    let reason = "payload does not decode: it nests deeper than the limit of 128 levels";
    assert_eq!(
        records,
        [
            (
                "deep-Bincode".to_owned(),
                "undecodable".to_owned(),
                reason.to_owned(),
                queue.clone(),
                too_deep(Codec::Bincode).len(),
            ),
            (
                "deep-Json".to_owned(),
                "undecodable".to_owned(),
                reason.to_owned(),
                queue.clone(),
                too_deep(Codec::Json).len(),
            ),
        ]
    );
    assert_eq!(ready_count(&conn, &queue).await, 0);
    assert_eq!(ready_count(&conn, &format!("{queue}.dead")).await, 0);
    delete_queues(&conn, &queue).await;
}
