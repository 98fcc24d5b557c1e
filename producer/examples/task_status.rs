//! Asking what became of tasks from a Rust service: the status API of a `warren-producer
//! serve --events-stream S --index PATH` through `StatusClient` (the `status-client` feature).
//! Run `cargo run -p warren-producer --features status-client --example task_status -- ID
//! [SERVER]` (default server: `http://127.0.0.1:8080`; the bearer token, if the server
//! requires one, in `WARREN_AUTH_TOKEN`).

use std::time::Duration;
use warren_producer::status::{ClientError, State, StatusClient, TaskQuery};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let id = args.next().ok_or("usage: task_status ID [SERVER]")?;
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());

    let token = std::env::var("WARREN_AUTH_TOKEN").ok();
    let client = StatusClient::new(&server, token)?;
    let status = client.task(&id).await?;
    println!("{id} is {}", status.state);

    // Wait for the task to end: its final status, or `TimedOut` with the last one seen.
    match client.wait(&id, Duration::from_secs(30)).await {
        Ok(done) if done.state == State::Succeeded => println!("{id} succeeded"),
        Ok(done) => println!("{id} ended {}: {:?}", done.state, done.error),
        Err(ClientError::TimedOut { last, .. }) => println!("{id} is still {}", last.state),
        Err(error) => return Err(error.into()),
    }

    // The ten latest dead letters, and the workers running now.
    let dead = TaskQuery::new().state(State::DeadLettered).limit(10);
    for task in client.tasks(&dead).await?.tasks {
        println!("{} dead-lettered: {:?}", task.id, task.error);
    }
    for worker in client.workers().await?.workers {
        println!(
            "{} on {} is {}",
            worker.id,
            worker.host,
            worker.status.as_str()
        );
    }
    Ok(())
}
