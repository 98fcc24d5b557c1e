//! [`StatusClient`]: the status API of a `warren-producer serve --index` from Rust. A task's
//! status and timeline by id, filtered listings, the workers, and [`StatusClient::wait`] for a task to
//! end, all answered as the types the server writes ([`super::api`]).

use super::api::{TaskList, TaskStatus, TaskTimeline, Timestamp, WorkerList};
use super::transport::{encode, Answer, Transport};
use super::State;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;

/// How long one request may take, connecting included, unless set otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause between two polls of [`StatusClient::wait`]; it doubles up to
/// [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The longest pause between two polls of [`StatusClient::wait`].
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the status API gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not `http://host[:port][/prefix]`: fix it.
    #[error("the server URL: {0}")]
    Url(String),
    /// The server did not answer (refused, reset, timed out): check that it runs, then try
    /// again.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server keeps no status index: start it with `--events-stream` and `--index`.
    #[error("the server keeps no status index: {0}")]
    NoIndex(String),
    /// The server refused the request (a bad parameter, a missing or wrong token, an index
    /// it cannot read): the message says which; retrying the same request will not help.
    #[error("the server answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer is not the API this client knows (another server on that port, or an
    /// incompatible version).
    #[error("{url} answered something that is not Warren's status API: {reason}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What could not be read.
        reason: String,
    },
    /// [`StatusClient::wait`] ran out of time before the task ended; `last` is its status at
    /// the last poll. Wait again, or look at why it does not end (`lost`, `retrying`).
    #[error("task {} has not ended within {timeout:?}: it is {}", last.id, last.state)]
    TimedOut {
        /// The status at the last poll.
        last: Box<TaskStatus>,
        /// The time waited.
        timeout: Duration,
    },
}

/// What [`StatusClient::tasks`] lists; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    state: Option<State>,
    task: Option<String>,
    queue: Option<String>,
    since: Option<Timestamp>,
    limit: Option<u16>,
    cursor: Option<String>,
}

impl TaskQuery {
    /// Every task, newest change first, in pages of the server's default size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only tasks in `state`.
    pub fn state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    /// Only tasks of this name.
    pub fn task(mut self, name: impl Into<String>) -> Self {
        self.task = Some(name.into());
        self
    }

    /// Only tasks of this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only tasks whose status changed at or after `since`.
    pub fn since(mut self, since: Timestamp) -> Self {
        self.since = Some(since);
        self
    }

    /// At most `limit` tasks a page (the server accepts 1 to 1000).
    pub fn limit(mut self, limit: u16) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page after the one that gave this `next_cursor`.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// The query string of `GET /v1/tasks`.
    fn query_string(&self) -> String {
        let (since, limit) = (
            self.since.map(|t| t.to_string()),
            self.limit.map(|l| l.to_string()),
        );
        let pairs = [
            ("state", self.state.map(State::as_str)),
            ("task", self.task.as_deref()),
            ("queue", self.queue.as_deref()),
            ("since", since.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", self.cursor.as_deref()),
        ];
        let given = pairs
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode((*v)?))));
        given.collect::<Vec<_>>().join("&")
    }
}

/// A client of the status API of a `warren-producer serve` that keeps a status index.
#[derive(Clone, Debug)]
pub struct StatusClient {
    transport: Transport,
    request_timeout: Duration,
}

impl StatusClient {
    /// A client of the server at `base` (`http://host[:port][/prefix]`), presenting the
    /// bearer `token` if the server requires one (its `--auth-token-file`).
    pub fn new(base: &str, token: Option<String>) -> Result<StatusClient, ClientError> {
        Ok(StatusClient {
            transport: Transport::new(base, token)?,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Bounds each request, connecting included (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The status of task `id`; `unknown` when no event of it has reached the index (yet).
    pub async fn task(&self, id: &str) -> Result<TaskStatus, ClientError> {
        let path = format!("/v1/tasks/{}", encode(id));
        self.get(&path).await
    }

    /// Every event of task `id` the index read, in the merge rule's order (the one that
    /// decides its status last); none when no event of it has reached the index (yet).
    pub async fn timeline(&self, id: &str) -> Result<TaskTimeline, ClientError> {
        let path = format!("/v1/tasks/{}/timeline", encode(id));
        self.get(&path).await
    }

    /// A page of the tasks `query` selects, newest change first.
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskList, ClientError> {
        self.get(&format!("/v1/tasks?{}", query.query_string()))
            .await
    }

    /// The workers the index has heard from, alive ones first.
    pub async fn workers(&self) -> Result<WorkerList, ClientError> {
        self.get("/v1/workers").await
    }

    /// Polls task `id` until it ends (succeeded, dead-lettered, expired, or any other ending
    /// [`State::is_ended`] names) and returns that status, or [`ClientError::TimedOut`] after
    /// `timeout`. A task that is `unknown`, `running`, `retrying` or `lost` is waited for;
    /// an unreachable server is asked again until the timeout.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskStatus, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_POLL_INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let polled = self.task(id).await;
            match polled {
                Ok(status) if status.state.is_ended() => return Ok(status),
                Ok(status) if left.is_zero() => {
                    return Err(ClientError::TimedOut {
                        last: Box::new(status),
                        timeout,
                    })
                }
                Err(error @ ClientError::Unreachable { .. }) if left.is_zero() => {
                    return Err(error)
                }
                Err(ClientError::Unreachable { url, reason }) => {
                    tracing::debug!(%url, %reason, "status server unreachable, asking again");
                }
                Err(error) => return Err(error),
                Ok(_) => {}
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_POLL_INTERVAL);
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let answer = self.transport.get(path, self.request_timeout).await?;
        let url = || self.transport.url(path);
        match answer.status {
            200 => serde_json::from_slice(&answer.body).map_err(|e| ClientError::Malformed {
                url: url(),
                reason: e.to_string(),
            }),
            501 => Err(ClientError::NoIndex(message(&answer))),
            status => Err(ClientError::Refused {
                status,
                message: message(&answer),
            }),
        }
    }
}

/// The server's error message (`{"error": ...}`), or the body as text.
fn message(answer: &Answer) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(body) => body.error,
        Err(_) => String::from_utf8_lossy(&answer.body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_only_what_it_filters_on() {
        assert_eq!(TaskQuery::new().query_string(), "");
        let query = TaskQuery::new()
            .state(State::DeadLettered)
            .queue("mail out")
            .since(Timestamp::from_millis(1_767_225_600_000))
            .limit(5);
        assert_eq!(
            query.query_string(),
            "state=dead_lettered&queue=mail%20out&since=2026-01-01T00%3A00%3A00.000Z&limit=5"
        );
    }
}
