//! The classic state queues `<lease name>.state.<schedule>` of versions before the quorum
//! ones: read once by the first leader after an upgrade, so that the last tick carries over,
//! then deleted.
//!
//! Such a queue lives on one node. A passive declare while that node is down gets the same 404
//! as a queue that does not exist, but with other words ([`inspect_queue`] tells them apart),
//! so an outage is never taken for "nothing recorded".

use super::state::{self, LoadError};
use crate::Publisher;
use lapin::options::QueueDeleteOptions;
use lapin::Channel;
use warren_common::fault::Operation;
use warren_common::{inspect_queue, TopologyError};

/// What an earlier version left behind.
pub(crate) enum Classic {
    /// No classic state queue: nothing to carry over.
    Missing,
    /// The queue exists; `channel` is the one it was read on, for [`delete`].
    Present {
        /// Its tick, if it holds a readable record.
        record: Option<u64>,
        /// The channel it was read on.
        channel: Channel,
    },
}

/// The classic state queue an earlier version declared for `schedule`.
pub(crate) fn queue_name(lease_name: &str, schedule: &str) -> String {
    format!("{lease_name}.state.{schedule}")
}

/// Reads `queue`'s record, leaving it in place, without declaring the queue.
pub(crate) async fn inspect(publisher: &Publisher, queue: &str) -> Result<Classic, LoadError> {
    // A passive declare of a missing queue closes its channel: this one is used for nothing
    // else.
    let channel = publisher
        .create_channel()
        .await
        .map_err(|e| LoadError::Unavailable {
            queue: queue.to_owned(),
            reason: e.to_string(),
        })?;
    let ready = match inspect_queue(&channel, queue).await {
        Ok(state) => state.ready,
        Err(TopologyError::NotFound(_)) => return Ok(Classic::Missing),
        Err(error) => return Err(LoadError::from_topology(queue, error)),
    };
    let record = if ready == 0 {
        None
    } else {
        state::read(&channel, queue)
            .await
            .map_err(|e| LoadError::from_lapin(queue, e, Operation::Use))?
            .map(|recorded| recorded.tick_ms)
    };
    Ok(Classic::Present { record, channel })
}

/// Deletes `queue`, read on `channel`, once the quorum queue holds its tick. A failure is
/// only logged: the next leader finds the queue again and deletes it then.
pub(crate) async fn delete(channel: Channel, queue: &str) {
    match channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
    {
        Ok(_) => tracing::info!(
            queue,
            "deleted the classic state queue of an earlier version"
        ),
        Err(error) => {
            tracing::warn!(queue, %error, "could not delete the classic state queue of an earlier version; the next leader tries again");
        }
    }
    let _ = channel.close(200, "classic state read".into()).await;
}
