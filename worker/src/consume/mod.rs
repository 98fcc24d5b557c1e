//! Consuming a queue, from its subscription to each delivery's ack. A delivery's path, one
//! file each, in the order it goes through them:
//!
//! 1. [`subscription`]: declares the queue and subscribes to it, and does so again (with
//!    backoff) while the broker cannot serve it.
//! 2. [`consumer`]: the consume loop. Takes deliveries as the prefetch allows, gives them
//!    concurrency permits in the order they came, and hands what is settled to the acks.
//! 3. [`delivery`]: one delivery's stages, in one type: waiting for its turn, running,
//!    routing its failure, settled.
//! 4. [`execute`]: the checks that decide whether it runs, then its handler under its
//!    timeout with panics caught. Produces an [`Outcome`](crate::Outcome); no broker here.
//! 5. [`routing`]: publishes a failed task's retry or dead letter, with a confirm, before
//!    the delivery is acked.
//! 6. [`report`]: records the task's transition in the events stream and answers a caller
//!    waiting for its end, with the handler's result.
//! 7. [`acks`]: settles deliveries on the channel with as few frames as possible, and owns
//!    the timers that send what is held back.
//!
//! Beside the path: [`isolation`] runs alone the tasks that keep crashing their workers, and
//! [`monitor`] re-subscribes a consumer that stalls.

pub(crate) mod acks;
pub(crate) mod consumer;
pub(crate) mod delivery;
pub(crate) mod execute;
pub(crate) mod isolation;
pub(crate) mod monitor;
pub(crate) mod report;
pub(crate) mod routing;
pub(crate) mod subscription;
