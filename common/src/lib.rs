//! Everything Warren's producers and workers share: the wire contract (how a task maps to an
//! AMQP message), the payload codecs, the queue topology, connecting with backoff, and the
//! telemetry and shutdown plumbing every process needs.
//!
//! The wire contract is written down for other languages in `docs/wire-format.md`; the
//! constants in [`headers`] and the functions of [`Envelope`] are its single implementation.

mod admin;
mod amqp;
mod cascade;
mod codec;
mod connect;
pub mod delay;
mod depth;
mod envelope;
pub mod fault;
mod header_value;
pub mod headers;
mod queue;
mod republish;
mod shutdown;
mod telemetry;
mod topology;
mod trace;

pub use admin::{admin_router, serve_admin, AdminError, Health, Readiness};
pub use amqp::{AmqpArgs, AmqpArgsError, AmqpUrl, DEFAULT_FRAME_MAX};
pub use codec::{Codec, CodecError};
pub use connect::{connect, give_up_after, ConnectError, Pacer, Unreachable};
pub use envelope::{
    id_time_ms, now_ms, Claimed, Envelope, EnvelopeError, TaskId, DEFAULT_SCHEMA_VERSION,
};
pub use header_value::{header_string, header_u64, int_value, text_value};
pub use queue::{dead_letter_queue_name, isolation_queue_name, QueueKind, QueueSpec, Retention};
pub use republish::{headers_without, republished, BROKER_HEADERS};
pub use shutdown::{shutdown_signal, Shutdown};
pub use telemetry::{init_command_tracing, init_tracing, LogFormat};
pub use topology::{QueueState, Topology, TopologyError, DEFAULT_EXCHANGE};
pub use trace::TraceParent;
