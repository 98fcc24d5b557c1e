//! The leader lease: an exclusive queue, `<lease name>.lease`.
//!
//! RabbitMQ lets one connection only declare an exclusive queue; any other connection's
//! declare is refused with 405 RESOURCE_LOCKED (which closes the channel it was made on, so
//! each attempt uses a throwaway channel). The broker deletes the queue when its connection
//! closes or dies (a killed process closes its socket at once; a vanished host is noticed by
//! the missed heartbeats), and the next standby's attempt then succeeds. The lease is thus
//! tied to a TCP connection, and the leader publishes on that same connection: a replica that
//! lost the lease has lost the connection it would publish on.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::fault::{classify, Operation};
use warren_common::text_value;

/// How often a lost connection is checked for while leading.
const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// Refused attempts after which a standby opens a fresh connection. lapin (4.12) never frees
/// the id of a channel the broker closed, and a connection has 2047 channel ids: without
/// recycling, a standby could no longer try the lease after 2047 attempts (measured).
const ATTEMPTS_PER_CONNECTION: u32 = 1000;

/// How an attempt to take the lease ended.
pub(crate) enum Acquired {
    /// This connection holds the lease.
    Held,
    /// Shutdown was asked for while standing by.
    Cancelled,
    /// The connection was lost while standing by.
    Lost(Option<lapin::Error>),
    /// The connection has used up its share of attempts: open a fresh one and go on.
    Recycle,
    /// The broker refuses the lease queue for a reason retrying will not fix.
    Refused(lapin::Error),
}

/// The lease queue of the scheduler group `lease_name`.
pub(crate) fn queue_name(lease_name: &str) -> String {
    format!("{lease_name}.lease")
}

/// Tries to take the lease every `retry` until it is held, the connection is lost or `cancel`
/// fires. Logs when it starts standing by, unless `standing_by` says it already was.
pub(crate) async fn acquire(
    conn: &Connection,
    queue: &str,
    retry: Duration,
    standing_by: &mut bool,
    cancel: &CancellationToken,
) -> Acquired {
    for _ in 0..ATTEMPTS_PER_CONNECTION {
        if !conn.status().connected() {
            return Acquired::Lost(None);
        }
        match try_declare(conn, queue).await {
            Ok(()) => return Acquired::Held,
            Err(error) if !conn.status().connected() => return Acquired::Lost(Some(error)),
            Err(error) => match protocol_code(&error) {
                // RESOURCE_LOCKED: another connection holds the lease.
                Some(405) => {
                    if !*standing_by {
                        tracing::info!(
                            lease = queue,
                            "standing by: another scheduler holds the lease"
                        );
                        *standing_by = true;
                    }
                }
                _ if classify(&error, Operation::Use).is_permanent() => {
                    return Acquired::Refused(error)
                }
                _ => tracing::warn!(lease = queue, %error, "could not try the lease; retrying"),
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => return Acquired::Cancelled,
            _ = tokio::time::sleep(retry) => {}
        }
    }
    Acquired::Recycle
}

/// Declares the lease queue on a channel of its own, closed afterwards (if the broker has not
/// closed it already). The queue outlives the channel: it belongs to the connection.
async fn try_declare(conn: &Connection, queue: &str) -> Result<(), lapin::Error> {
    let channel = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        exclusive: true,
        // Not durable: it must vanish with its connection, even over a broker restart.
        durable: false,
        auto_delete: true,
        ..Default::default()
    };
    let mut args = FieldTable::default();
    // Exclusive queues are classic; say so in case the vhost defaults to another type.
    args.insert("x-queue-type".into(), text_value("classic"));
    let declared = channel.queue_declare(queue.into(), options, args).await;
    if channel.status().connected() {
        let _ = channel.close(200, "lease attempt done".into()).await;
    }
    declared.map(|_| ())
}

/// The AMQP reply code of a channel or connection error from the broker.
pub(crate) fn protocol_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Resolves once the connection holding the lease is no longer connected (closed by either
/// side or failed): from then on the lease may be someone else's.
pub(crate) async fn lost(status: &ConnectionStatus) {
    while status.connected() {
        tokio::time::sleep(LIVENESS_POLL).await;
    }
}
