//! Connecting to the broker: URLs (with the password masked wherever one is printed),
//! several cluster nodes tried in turn, and retries with exponential backoff that never give
//! up until the process is told to stop.

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The broker on a developer's machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// An AMQP URL. Its `Display` masks the password, so it is safe to log.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// The full URL, password included: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = url::Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "amqp" | "amqps" => Ok(AmqpUrl(s.trim().to_owned())),
            other => Err(format!("scheme `{other}` is not amqp:// or amqps://")),
        }
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                // Setting a password only fails for URLs that cannot have one.
                let _ = url.set_password(Some("***"));
                f.write_str(url.as_str())
            }
            Ok(url) => f.write_str(url.as_str()),
            Err(_) => f.write_str("<invalid url>"),
        }
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

/// Broker connection flags shared by every Warren binary.
#[derive(Clone, Debug, clap::Args)]
pub struct AmqpArgs {
    /// Broker URL; repeat the flag or separate with commas to list the nodes of a cluster,
    /// which are tried in turn.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        value_delimiter = ',',
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub urls: Vec<AmqpUrl>,
}

impl Default for AmqpArgs {
    fn default() -> Self {
        AmqpArgs {
            urls: vec![DEFAULT_AMQP_URL.parse().expect("the default URL is valid")],
        }
    }
}

/// Connecting was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The process is shutting down.
    #[error("gave up connecting: shutting down")]
    Cancelled,
    /// No URL was given.
    #[error("no AMQP URL given")]
    NoUrl,
}

/// Connects to the first node that answers, trying each URL in turn and backing off
/// exponentially (capped at 10 s, with jitter) between rounds. Never gives up on its own;
/// returns only once connected or when `cancel` fires. Every failure is logged as a warning
/// with the password masked.
pub async fn connect(
    urls: &[AmqpUrl],
    name: &str,
    cancel: &CancellationToken,
) -> Result<Connection, ConnectError> {
    if urls.is_empty() {
        return Err(ConnectError::NoUrl);
    }
    let mut backoff = ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_max_interval(Duration::from_secs(10))
        .with_max_elapsed_time(None)
        .build();
    let mut attempt: u64 = 0;
    loop {
        for url in urls {
            attempt += 1;
            let props = ConnectionProperties::default().with_connection_name(name.into());
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
                result = Connection::connect(url.expose(), props) => result,
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
        let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(10));
        tracing::info!(retry_in = ?delay, "retrying broker connection");
        tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_when_printed() {
        let url: AmqpUrl = "amqp://user:s3cret@broker:5672/%2f".parse().unwrap();
        assert_eq!(url.to_string(), "amqp://user:***@broker:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "amqp://user:s3cret@broker:5672/%2f");
    }

    #[test]
    fn only_amqp_schemes_are_accepted() {
        assert!("http://x".parse::<AmqpUrl>().unwrap_err().contains("http"));
        assert!("amqps://h:5671/v".parse::<AmqpUrl>().is_ok());
    }
}
