//! Connecting to the broker: several cluster nodes tried in turn, and retries with
//! exponential backoff that never give up until the process is told to stop. One-shot
//! commands bound that with [`give_up_after`].

use crate::{Amqp, AmqpUrl};
use backoff::backoff::Backoff;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connecting was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The process is shutting down.
    #[error("gave up connecting: shutting down")]
    Cancelled,
}

/// No broker accepted a connection within a one-shot command's connect timeout.
///
/// Its message names every URL tried (password masked) and for how long; the error of each
/// attempt was logged as a warning when it happened.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not connect to the broker within {}: tried {} (each attempt's error is logged above)",
    humantime::format_duration(*.waited),
    UrlList(.urls)
)]
pub struct Unreachable {
    /// The URLs that were tried in turn.
    pub urls: Vec<AmqpUrl>,
    /// How long they were tried.
    pub waited: Duration,
}

/// URLs separated by commas, each with its password masked.
struct UrlList<'a>(&'a [AmqpUrl]);

impl fmt::Display for UrlList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, url) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{url}")?;
        }
        Ok(())
    }
}

/// Gives `connecting` (a future that connects to `urls` and retries until it succeeds, such as
/// [`connect`]) at most `timeout`, then drops it and returns [`Unreachable`]. For commands that
/// should fail rather than wait for a broker that is not there; long-running processes call
/// [`connect`] alone and keep retrying.
///
/// Within the time, every URL is tried in turn with backoff, as [`connect`] does; an attempt
/// at a host that never answers can take the rest of the time unless the URL sets
/// `connection_timeout` (milliseconds).
pub async fn give_up_after<F: Future>(
    timeout: Duration,
    amqp: &Amqp,
    connecting: F,
) -> Result<F::Output, Unreachable> {
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| Unreachable {
            urls: amqp.urls().to_vec(),
            waited: timeout,
        })
}

/// Connects to the first node that answers, trying each URL in turn and backing off
/// exponentially (capped at 10 s, with jitter) between rounds. Never gives up on its own;
/// returns only once connected or when `cancel` fires. Every failure (an untrusted certificate
/// included) is logged as a warning with the password masked.
pub async fn connect(
    amqp: &Amqp,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let mut pacer = Pacer::new();
    let mut attempt: u64 = 0;
    loop {
        for url in amqp.urls() {
            attempt += 1;
            let props = ConnectionProperties::default().with_connection_name(name.into());
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
                result = url.open(props) => result,
            };
            match result {
                Ok(conn) => {
                    tracing::info!(url = %url, connection = name, attempt, "connected to broker");
                    return Ok(conn);
                }
                Err(error) => {
                    tracing::warn!(url = %url, connection = name, attempt, %error, "broker unreachable");
                }
            }
        }
        let delay = pacer.next_delay();
        tracing::info!(retry_in = ?delay, "retrying broker connection");
        tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The pauses between attempts at something the broker cannot serve now (a node that is
/// down, a queue without a leader): 200 ms doubling to at most 10 s, with jitter, never
/// giving up. One per thing retried, so each backs off on its own.
pub struct Pacer(ExponentialBackoff);

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// A pacer at its shortest pause.
    pub fn new() -> Self {
        Pacer(
            ExponentialBackoffBuilder::new()
                .with_initial_interval(Duration::from_millis(200))
                .with_max_interval(Duration::from_secs(10))
                .with_max_elapsed_time(None)
                .build(),
        )
    }

    /// The next pause (growing with each call until [`reset`](Self::reset)).
    pub fn next_delay(&mut self) -> Duration {
        self.0.next_backoff().unwrap_or(Duration::from_secs(10))
    }

    /// Back to the shortest pause, after a success.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Sleeps the next pause; false if `cancel` fired first.
    pub async fn pause(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn giving_up_names_every_url_masked_and_the_time() {
        let urls: Amqp = "amqp://u:s3cret@a:5672/%2f,amqps://b/%2f".parse().unwrap();
        let never = std::future::pending::<()>();
        let error = give_up_after(Duration::from_millis(20), &urls, never)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "could not connect to the broker within 20ms: tried amqp://u:***@a:5672/%2f, \
             amqps://b/%2f (each attempt's error is logged above)"
        );
        let done = give_up_after(Duration::from_secs(5), &urls, async { 7 }).await;
        assert_eq!(done.unwrap(), 7);
    }
}
