//! Calling a task and waiting for its result: `Publisher::call` publishes the task and
//! returns what its handler returned, or why it failed. Run `cargo run -p warren-producer
//! --example call -- [QUEUE]` against the broker in `AMQP_URL` (default: the local one) while
//! the worker example (`cargo run -p warren-worker --example worker -- --queue QUEUE`) runs.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_producer::{CallError, Publisher, PublisherConfig, Task};

// The worker's task type and its result (in a real project, a crate both depend on).
#[derive(Serialize, Deserialize)]
struct Resize {
    path: String,
    width: u32,
}

impl Task for Resize {
    const NAME: &'static str = "images.resize";
}

#[derive(Debug, Deserialize)]
struct Resized {
    path: String,
    width: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let mut config = PublisherConfig {
        default_queue: queue,
        ..PublisherConfig::default()
    };
    if let Ok(url) = std::env::var("AMQP_URL") {
        config.amqp = url.parse()?;
    }
    let publisher = Publisher::connect(config, &CancellationToken::new()).await?;
    let timeout = Duration::from_secs(30);

    let task = Resize {
        path: "photos/cat.png".into(),
        width: 640,
    };
    let resized: Resized = publisher.call(&task, timeout).await?;
    println!(
        "images.resize returned {} ({} wide)",
        resized.path, resized.width
    );

    // A task that fails says why; one that takes longer than the timeout is still running.
    let task = Resize {
        path: "photos/none.png".into(),
        width: 0,
    };
    match publisher.call::<_, Resized>(&task, timeout).await {
        Err(CallError::Failed { kind, reason, .. }) => {
            println!("images.resize failed: {kind}: {reason}")
        }
        Err(CallError::Timeout { id, .. }) => println!("images.resize {id} is still running"),
        other => println!("images.resize: {other:?}"),
    }

    publisher.close().await;
    Ok(())
}
