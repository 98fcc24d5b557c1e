//! Shutdown signalling: the first SIGTERM or SIGINT asks for a graceful drain, a second one
//! asks to stop at once.

use tokio_util::sync::CancellationToken;

/// The two stages of stopping a process: `drain` (stop taking work, finish what is running)
/// and `abort` (stop now).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Fired by the first signal: stop taking new work.
    pub drain: CancellationToken,
    /// Fired by the second signal: stop at once.
    pub abort: CancellationToken,
}

impl Shutdown {
    /// A fresh pair of tokens, fired by nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Listens for SIGTERM and SIGINT: the first fires `shutdown.drain`, the second
/// `shutdown.abort`. Spawn it once per process.
pub async fn shutdown_signal(shutdown: Shutdown) {
    for stage in [&shutdown.drain, &shutdown.abort] {
        wait_for_signal().await;
        stage.cancel();
        if stage.is_cancelled() && std::ptr::eq(stage, &shutdown.drain) {
            tracing::info!("shutdown requested: draining (send the signal again to stop at once)");
        } else {
            tracing::warn!("second shutdown signal: stopping at once");
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    // Installing a handler fails only if signals are unsupported; then wait on ctrl-c alone.
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
