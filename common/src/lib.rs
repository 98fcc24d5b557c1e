//! Everything Warren's producers and workers share: the wire contract (how a task maps to an
//! AMQP message), the payload codecs, the queue topology, connecting with backoff, and the
//! telemetry and shutdown plumbing every process needs.
//!
//! The wire contract is written down for other languages in `docs/wire-format.md`; the
//! constants in [`headers`], the functions of [`Envelope`], [`DeadLetterRecord`],
//! [`ReasonKind`] and [`delay`] are its single implementation.

#[cfg(feature = "admin")]
mod admin;
mod amqp;
mod broker_metrics;
mod cascade;
mod codec;
mod connect;
pub mod control;
mod dead_letter;
mod declare;
pub mod delay;
mod depth;
mod envelope;
pub mod events;
pub mod fault;
mod header_value;
pub mod headers;
mod health;
#[cfg(feature = "process")]
pub mod process;
mod publish;
mod queue;
mod reason;
pub mod reply;
mod republish;
mod shutdown;
mod task;
mod telemetry;
mod topology;
mod trace;

#[cfg(feature = "admin")]
pub use admin::{admin_router, serve_admin, AdminError};
pub use amqp::{Amqp, AmqpArgs, AmqpArgsError, AmqpUrl, DEFAULT_AMQP_URL, DEFAULT_FRAME_MAX};
pub use broker_metrics::BrokerMetrics;
pub use codec::{Codec, CodecError};
pub use connect::{connect, give_up_after, ConnectError, Pacer, Unreachable};
pub use dead_letter::{
    truncate_reason, DeadLetterKind, DeadLetterRecord, BROKER_KIND_PREFIX, MAX_REASON_BYTES,
    RECORD_HEADERS, UNKNOWN_KIND,
};
pub use declare::{inspect_queue, QueueState, TopologyError};
pub use envelope::{
    id_time_ms, now_ms, replay_count, Claimed, Envelope, EnvelopeError, TaskId,
    DEFAULT_SCHEMA_VERSION,
};
pub use header_value::{header_string, header_u64, int_value, text_value};
pub use health::{Health, Readiness};
pub use publish::{
    CallError, ProducerMetrics, PublishError, Publisher, PublisherConfig, TaskOptions,
    DEFAULT_CONFIRM_TIMEOUT, DIRECT_REPLY_TO,
};
pub use queue::{dead_letter_queue_name, isolation_queue_name, QueueKind, QueueSpec, Retention};
pub use reason::ReasonKind;
pub use republish::{headers_without, republished, BROKER_HEADERS};
pub use shutdown::{shutdown_signal, Shutdown};
pub use task::Task;
pub use telemetry::LogFormat;
#[cfg(feature = "telemetry")]
pub use telemetry::{init_command_tracing, init_tracing};
pub use topology::{Topology, DEFAULT_EXCHANGE};
pub use trace::TraceParent;
