//! The defaults of the scheduler, the HTTP ingest and the status index, in one place: the
//! library's constructors (`SchedulerConfig::new`, `IngestConfig::new`,
//! `ConnectionLimits::default`, `IndexConfig::new`)
//! and the flags of `warren-scheduler` and `warren-producer serve` both take them from here,
//! as `warren_worker::defaults` does for the worker.

/// `warren-scheduler` and [`SchedulerConfig`](crate::scheduler::SchedulerConfig).
#[cfg(feature = "scheduler")]
pub mod scheduler {
    use std::time::Duration;

    /// The scheduler group: the lease queue is `warren.scheduler.lease`, the state queues
    /// `warren.scheduler.tick.<schedule>`.
    pub const LEASE_NAME: &str = "warren.scheduler";
    /// How often a standby tries to take the lease, which bounds the failover time.
    pub const LEASE_RETRY: Duration = Duration::from_secs(1);
    /// How long each publish waits for the broker's confirm: a publisher's own default.
    pub const CONFIRM_TIMEOUT: Duration = warren_common::DEFAULT_CONFIRM_TIMEOUT;
    /// The admin server's address (the worker's is port 9090).
    pub const ADMIN_ADDR: &str = "0.0.0.0:9092";
}

/// `warren-producer serve` and [`IngestConfig`](crate::IngestConfig).
#[cfg(feature = "http")]
pub mod ingest {
    use std::time::Duration;

    /// The address served.
    pub const LISTEN: &str = "0.0.0.0:8080";
    /// The queue of tasks that name none, declared at start.
    pub const QUEUE: &str = "default";
    /// How long a request waits for the broker's confirm (and at most for a reconnection)
    /// before it is answered 503: 10 s, shorter than a publisher's own 30 s because an HTTP
    /// client is waiting. `warren-producer serve` gives it to the ingest's publisher;
    /// [`IngestConfig::new`](crate::IngestConfig::new) keeps the timeout of the publisher
    /// configuration it is given.
    pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
    /// Largest request body: 1 MiB.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// Most tasks in one batch.
    pub const MAX_BATCH: usize = 1000;
    /// Time a client has to send a request's head: 10 s.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time a client has to send a whole request body: 30 s (1 MiB at ~35 KB/s).
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// Time a keep-alive connection may wait between requests: 75 s, longer than the 60 s
    /// idle timeout common in load balancers, so that the balancer closes first and never
    /// sends a request on a connection the server is closing.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    /// Connections served at once: 512, room for hundreds of slow or waiting clients while
    /// staying well under the common limit of 1024 open files.
    pub const MAX_CONNECTIONS: usize = 512;
    /// Longest `?wait=` of `POST /v1/tasks`: 60 s. A waiting request holds one of the
    /// connections; a task that takes longer is better followed by its status.
    pub const MAX_WAIT: Duration = Duration::from_secs(60);
}

/// `warren-producer serve --index` and [`IndexConfig`](crate::status::IndexConfig).
#[cfg(feature = "status")]
pub mod index {
    use std::time::Duration;

    /// How long an ended task stays in the index: 7 days, the events stream's own default
    /// retention, so that the index keeps what the stream can give again.
    pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Tasks in one page of `GET /v1/tasks` unless `limit` says otherwise.
    pub const PAGE: usize = 100;
    /// Most tasks in one page of `GET /v1/tasks`.
    pub const MAX_PAGE: usize = 1000;
}

/// `warren-producer serve --console` and [`ConsoleConfig`](crate::ConsoleConfig).
#[cfg(feature = "console")]
pub mod console {
    use std::time::Duration;

    /// How often a console page refreshes its figures.
    pub const REFRESH: Duration = Duration::from_secs(5);
}
