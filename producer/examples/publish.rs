//! Publishing typed tasks from a Rust service: each `send` returns once the broker has
//! confirmed the task. Run `cargo run -p warren-producer --example publish -- [QUEUE]`
//! against the broker in `AMQP_URL` (default: the local one) while the worker example
//! (`cargo run -p warren-worker --example worker -- --queue QUEUE`) runs.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_producer::{Publisher, PublisherConfig, Task, TaskOptions};

// The worker's task types (in a real project, a crate both depend on).
#[derive(Serialize, Deserialize)]
struct Resize {
    path: String,
    width: u32,
}

impl Task for Resize {
    const NAME: &'static str = "images.resize";
}

#[derive(Serialize, Deserialize)]
struct Notify {
    user: u64,
    text: String,
}

impl Task for Notify {
    const NAME: &'static str = "users.notify";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let mut config = PublisherConfig {
        default_queue: queue.clone(),
        ..PublisherConfig::default()
    };
    if let Ok(url) = std::env::var("AMQP_URL") {
        config.amqp = url.parse()?;
    }
    let publisher = Publisher::connect(config, &CancellationToken::new()).await?;

    for (i, width) in [320, 640, 0].into_iter().enumerate() {
        let path = format!("photos/{i}.png");
        let id = publisher.send(&Resize { path, width }).await?;
        println!("images.resize {id} confirmed");
    }
    let later = TaskOptions::new().delay(Duration::from_secs(1));
    let text = "your photos are ready (mail service busy)".to_owned();
    let id = publisher
        .send_with(&Notify { user: 7, text }, &later)
        .await?;
    println!("users.notify {id} confirmed (due in 1 s)");

    publisher.close().await;
    Ok(())
}
