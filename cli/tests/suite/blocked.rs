//! A broker that blocks publishers (a memory or disk alarm) makes the producer report
//! not-ready and fail publishes after its timeout instead of hanging; they go through again
//! once the alarm clears.

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_common::Readiness;
use warren_producer::{PublishError, Publisher, PublisherConfig, TaskOptions};
use warren_tests::*;

#[tokio::test]
async fn a_blocked_broker_fails_publishes_after_the_timeout_and_readiness_says_blocked() {
    let Some(node) = PrivateNode::start_or_skip("blocked") else {
        return;
    };
    let queue = unique_queue("blocked");
    let config = PublisherConfig {
        amqp: node.url().parse().unwrap(),
        default_queue: queue.clone(),
        confirm_timeout: Duration::from_secs(2),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &CancellationToken::new())
        .await
        .unwrap();
    publisher
        .declare(&warren_common::QueueSpec::new(&queue, Default::default()))
        .await
        .unwrap();
    publisher
        .publish("demo.noop", &(), &TaskOptions::default())
        .await
        .unwrap();

    // A memory high watermark of 0 raises the memory alarm (within a few seconds); the
    // broker then blocks the connection as soon as it publishes.
    assert!(node.ctl(&["set_vm_memory_high_watermark", "0"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the alarm never blocked the publisher"
        );
        if publisher
            .publish("demo.noop", &(), &TaskOptions::default())
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(publisher.health().get(), Readiness::Blocked);
    let started = Instant::now();
    let result = publisher
        .publish("demo.noop", &(), &TaskOptions::default())
        .await;
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(PublishError::Blocked { .. })),
        "{result:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "the publish gave up after its 2 s timeout: {waited:?}"
    );

    assert!(node.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    wait_until(Duration::from_secs(20), "the alarm to clear", || {
        let ready = publisher.health().get() == Readiness::Ready;
        async move { ready }
    })
    .await;
    publisher
        .publish("demo.noop", &(), &TaskOptions::default())
        .await
        .unwrap();
    publisher.close().await;
}
