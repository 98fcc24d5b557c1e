//! Payload decoding, JSON and bincode, into representative types: ordinary structs, the demo
//! tasks' payloads, self-describing JSON values, and recursive types. Decoding runs on a
//! thread with a tokio worker thread's 2 MiB stack, as in the worker, so a decode that
//! recursed too deep would crash here; and whatever decodes nests at most `Codec::MAX_DEPTH`
//! levels.
//!
//! The first byte picks the codec (bit 0: 0 bincode, 1 JSON) and the type (the rest); the
//! remaining bytes are the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use warren_common::{Codec, CodecError};
use warren_fuzz::{Expr, Node, Order};

/// The stock worker's `demo.sleep` payload (warren-cli's `demo::Sleep`).
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Sleep {
    ms: u64,
}

/// The stock worker's `demo.flaky` payload (warren-cli's `demo::Flaky`).
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Flaky {
    fail_times: u32,
}

/// A tokio worker thread's default stack.
const WORKER_STACK: usize = 2 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let codec = if selector & 1 == 0 {
        Codec::Bincode
    } else {
        Codec::Json
    };
    let body = body.to_vec();
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || decode_as(selector >> 1, codec, &body))
        .expect("a decoding thread starts")
        .join()
        .expect("decoding does not panic");
});

fn decode_as(kind: u8, codec: Codec, body: &[u8]) {
    let max = Codec::MAX_DEPTH;
    match kind % 8 {
        0 => {
            if let Some(expr) = decode::<Expr>(codec, body) {
                assert!(expr.depth() <= max, "{} levels decoded", expr.depth());
                round_trip(codec, &expr);
            }
        }
        1 => {
            if let Some(node) = decode::<Node>(codec, body) {
                assert!(node.depth() <= max, "{} levels decoded", node.depth());
                round_trip(codec, &node);
            }
        }
        2 => {
            if let Some(order) = decode::<Order>(codec, body) {
                round_trip(codec, &order);
            }
        }
        3 => {
            decode::<Sleep>(codec, body);
        }
        4 => {
            decode::<Flaky>(codec, body);
        }
        5 => {
            decode::<Vec<Option<(String, u64)>>>(codec, body);
        }
        6 if codec == Codec::Json => {
            decode::<serde_json::Value>(codec, body);
        }
        _ => {
            decode::<()>(codec, body);
        }
    }
}

/// Decodes; an error must have a message, and a refusal for depth names the limit.
fn decode<T: DeserializeOwned>(codec: Codec, body: &[u8]) -> Option<T> {
    match codec.decode::<T>(body) {
        Ok(value) => Some(value),
        Err(e) => {
            if let CodecError::TooDeep(limit) = e {
                assert_eq!(limit, Codec::MAX_DEPTH);
            }
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

/// A decoded value encodes and decodes back to itself.
fn round_trip<T: DeserializeOwned + serde::Serialize + PartialEq + Debug>(codec: Codec, value: &T) {
    let body = codec.encode(value).expect("a decoded value encodes");
    assert_eq!(codec.decode::<T>(&body).ok().as_ref(), Some(value));
}
