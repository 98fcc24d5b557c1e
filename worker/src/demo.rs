//! Built-in demo tasks, so the stock `warren-worker` runs with no user code.

use crate::{Registry, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Payload of `demo.sleep`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sleep {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// Payload of `demo.cpu`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cpu {
    /// SHA-256 rounds to compute.
    pub rounds: u64,
}

/// Payload of `demo.flaky`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flaky {
    /// Attempts that fail before one succeeds.
    pub fail_times: u32,
}

/// Registers `demo.noop`, `demo.sleep`, `demo.cpu`, `demo.echo`, `demo.flaky`, `demo.fail`,
/// `demo.panic` and `demo.crash`.
pub fn register(registry: &mut Registry) {
    registry
        .register(
            "demo.noop",
            |_ctx: TaskContext, _: serde::de::IgnoredAny| async { Ok::<_, TaskError>(()) },
        )
        .register("demo.sleep", |_ctx: TaskContext, p: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok::<_, TaskError>(())
        })
        .register("demo.cpu", |_ctx: TaskContext, p: Cpu| async move {
            let digest = tokio::task::spawn_blocking(move || hash_rounds(p.rounds)).await?;
            tracing::debug!(digest = %hex(&digest), "hashed");
            Ok::<_, TaskError>(())
        })
        .register(
            "demo.echo",
            |_ctx: TaskContext, p: serde_json::Value| async move {
                tracing::info!(payload = %p, "echo");
                Ok::<_, TaskError>(())
            },
        )
        .register("demo.flaky", |ctx: TaskContext, p: Flaky| async move {
            if ctx.attempt <= p.fail_times {
                return Err(TaskError::retryable(format!(
                    "flaky failure {} of {}",
                    ctx.attempt, p.fail_times
                )));
            }
            Ok(())
        })
        .register(
            "demo.fail",
            |ctx: TaskContext, _: serde::de::IgnoredAny| async move {
                Err::<(), _>(TaskError::retryable(format!(
                    "demo.fail always fails (attempt {})",
                    ctx.attempt
                )))
            },
        )
        .register(
            "demo.panic",
            |_ctx: TaskContext, _: serde::de::IgnoredAny| async move {
                if std::hint::black_box(true) {
                    panic!("demo.panic panics on purpose");
                }
                Ok::<_, TaskError>(())
            },
        )
        .register(
            "demo.crash",
            |_ctx: TaskContext, _: serde::de::IgnoredAny| async move {
                tracing::error!("demo.crash: aborting the worker process on purpose");
                std::process::abort();
                #[allow(unreachable_code)]
                Ok::<_, TaskError>(())
            },
        );
}

fn hash_rounds(rounds: u64) -> [u8; 32] {
    let mut digest = [0u8; 32];
    for _ in 0..rounds {
        digest = Sha256::digest(digest).into();
    }
    digest
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
