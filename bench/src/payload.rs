//! The tasks both sides run, and their JSON payloads. Both sides send the same body bytes
//! and the same task names; Warren adds its envelope (message id and headers) on top.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Does nothing (Warren's built-in `demo.noop`).
pub const NOOP: &str = "demo.noop";
/// Sleeps `ms` milliseconds (Warren's built-in `demo.sleep`).
pub const SLEEP: &str = "demo.sleep";
/// Returns its payload (Warren's built-in `demo.echo`).
pub const ECHO: &str = "demo.echo";
/// Hashes `rounds` times on a blocking thread (Warren's built-in `demo.cpu`, CPU-bound).
pub const CPU: &str = "demo.cpu";
/// Records the time since `created_us` when its handler starts (registered by the benchmark).
pub const STAMP: &str = "bench.stamp";

/// Filler making a W1 body 100 bytes long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Filler {
    /// Padding.
    pub pad: String,
}

impl Filler {
    /// A filler whose JSON encoding is exactly `bytes` long (at least 10).
    pub fn of_size(bytes: usize) -> Self {
        Filler {
            pad: "x".repeat(bytes.saturating_sub(r#"{"pad":""}"#.len())),
        }
    }
}

/// Payload of a sleep task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// Payload of a CPU task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cpu {
    /// SHA-256 rounds.
    pub rounds: u64,
}

/// Payload of a latency probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stamp {
    /// Creation time, microseconds since the epoch.
    pub created_us: u64,
    /// Padding, to keep the body near W1's size.
    pub pad: String,
}

impl Stamp {
    /// A stamp created now.
    pub fn now() -> Self {
        Stamp {
            created_us: now_us(),
            pad: "x".repeat(64),
        }
    }
}

/// Microseconds since the Unix epoch (the wall clock: publisher and worker are separate
/// processes on one machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The JSON body of a payload.
pub fn json<T: Serialize>(payload: &T) -> Vec<u8> {
    serde_json::to_vec(payload).expect("the benchmark's payloads always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_the_requested_size() {
        assert_eq!(json(&Filler::of_size(100)).len(), 100);
    }
}
