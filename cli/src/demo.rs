//! Built-in demo tasks, so the stock `warren-worker` runs with no user code.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use warren_worker::{HandlerOptions, Payload, Registry, Task, TaskContext, TaskError};

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

impl Task for Sleep {
    const NAME: &'static str = "demo.sleep";
}

impl Task for Cpu {
    const NAME: &'static str = "demo.cpu";
}

impl Task for Flaky {
    const NAME: &'static str = "demo.flaky";
}

/// Registers `demo.noop`, `demo.sleep`, `demo.cpu`, `demo.echo`, `demo.flaky`, `demo.fail`,
/// `demo.panic` and `demo.crash`. The tasks that ignore their payload accept any payload in
/// either codec.
pub fn register(registry: &mut Registry) {
    let any = HandlerOptions::default();
    // Its hashing runs on tokio's blocking threads (up to 512 of them): held to one task
    // per CPU, so that a burst of demo.cpu tasks does not oversubscribe the machine while
    // async tasks keep running up to the worker's concurrency.
    let cpu_bound = HandlerOptions {
        cpu_bound: true,
        ..HandlerOptions::default()
    };
    registry
        .register_raw("demo.noop", any, |_: TaskContext, _: Payload| async {
            Ok::<_, TaskError>(())
        })
        .handle(|_: TaskContext, p: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok::<_, TaskError>(())
        })
        .handle_with(cpu_bound, |_: TaskContext, p: Cpu| async move {
            let digest = tokio::task::spawn_blocking(move || hash_rounds(p.rounds)).await?;
            // Its result: what a caller (`publish --wait`) or the task's status shows.
            Ok::<_, TaskError>(hex(&digest))
        })
        .register(
            "demo.echo",
            |_: TaskContext, p: serde_json::Value| async move {
                tracing::info!(payload = %p, "echo");
                // Its result is its payload.
                Ok::<_, TaskError>(p)
            },
        )
        .handle(|ctx: TaskContext, p: Flaky| async move {
            if ctx.attempt <= p.fail_times {
                let n = p.fail_times;
                return Err(TaskError::retryable(format!(
                    "flaky failure {} of {n}",
                    ctx.attempt
                )));
            }
            Ok(())
        })
        .register_raw(
            "demo.fail",
            any,
            |ctx: TaskContext, _: Payload| async move {
                let attempt = ctx.attempt;
                Err::<(), _>(TaskError::retryable(format!(
                    "demo.fail always fails (attempt {attempt})"
                )))
            },
        )
        .register_raw("demo.panic", any, |_: TaskContext, _: Payload| async move {
            if std::hint::black_box(true) {
                panic!("demo.panic panics on purpose");
            }
            Ok::<_, TaskError>(())
        })
        .register_raw("demo.crash", any, |_: TaskContext, _: Payload| async move {
            tracing::error!("demo.crash: aborting the worker process on purpose");
            std::process::abort();
            #[allow(unreachable_code)]
            Ok::<_, TaskError>(())
        });
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
