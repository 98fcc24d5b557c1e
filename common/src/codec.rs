//! Payload codecs: bincode (compact, Rust to Rust) and JSON (any language). A message's
//! `content_type` names its codec, and the worker decodes either into the handler's type.
//!
//! All bincode use lives here, so the crate can be swapped without touching the rest.

use crate::depth::{DepthLimit, MAX_DEPTH};
use bincode::config;
use serde::{de::DeserializeOwned, de::DeserializeSeed, Serialize};

/// The codec of a task payload, carried in the AMQP `content_type` property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `application/x-bincode`: bincode 2 with its standard (varint) configuration.
    #[default]
    Bincode,
    /// `application/json`: UTF-8 JSON.
    Json,
}

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The `content_type` names no codec Warren knows.
    #[error("unsupported content type {0:?} (expected application/x-bincode or application/json)")]
    UnsupportedContentType(String),
    /// The payload did not encode.
    #[error("payload does not encode: {0}")]
    Encode(String),
    /// The payload did not decode into the handler's type.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The payload nests deeper than [`Codec::MAX_DEPTH`] levels (the limit, carried here).
    #[error("payload does not decode: it nests deeper than the limit of {0} levels")]
    TooDeep(usize),
}

const BINCODE: &str = "application/x-bincode";
const JSON: &str = "application/json";

impl Codec {
    /// Most levels a payload may nest, in either codec: each sequence, tuple, map, struct,
    /// enum variant, `Some` and newtype struct is a level. Decoding refuses a deeper payload
    /// ([`CodecError::TooDeep`]) before it can recurse deep enough to overflow the stack.
    pub const MAX_DEPTH: usize = MAX_DEPTH;

    /// The MIME type written to `content_type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Bincode => BINCODE,
            Codec::Json => JSON,
        }
    }

    /// The codec named by a `content_type`; a missing content type means JSON, which is what
    /// a hand-written producer in another language most likely sent.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, CodecError> {
        // Read on every delivery: the exact names Warren writes need no parsing.
        match content_type {
            Some(BINCODE) => return Ok(Codec::Bincode),
            Some(JSON) | None => return Ok(Codec::Json),
            Some(_) => {}
        }
        // Parameters such as "; charset=utf-8" do not change the codec.
        let essence = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
        match essence {
            Some(BINCODE) => Ok(Codec::Bincode),
            Some(JSON) | None | Some("") => Ok(Codec::Json),
            Some(other) => Err(CodecError::UnsupportedContentType(other.to_owned())),
        }
    }

    /// Encodes a payload.
    pub fn encode<T: Serialize + ?Sized>(self, payload: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Bincode => bincode::serde::encode_to_vec(payload, config::standard())
                .map_err(|e| CodecError::Encode(e.to_string())),
            Codec::Json => {
                serde_json::to_vec(payload).map_err(|e| CodecError::Encode(e.to_string()))
            }
        }
    }

    /// Decodes a payload. Trailing bytes are an error. A bincode length prefix may claim at
    /// most a bounded multiple of the body's size, so a hostile prefix cannot make the worker
    /// allocate gigabytes, and a payload may nest at most [`MAX_DEPTH`](Self::MAX_DEPTH)
    /// levels, so a deep one cannot overflow the stack.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CodecError> {
        let limit = DepthLimit::new(MAX_DEPTH);
        let result = match self {
            Codec::Bincode => decode_bincode(body, &limit),
            Codec::Json => decode_json(body, &limit),
        };
        result.map_err(|e| {
            if limit.exceeded() {
                CodecError::TooDeep(MAX_DEPTH)
            } else {
                CodecError::Decode(e)
            }
        })
    }
}

fn decode_json<T: DeserializeOwned>(body: &[u8], limit: &DepthLimit) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // The depth limit is ours, the same for both codecs (serde_json's counts brackets only).
    deserializer.disable_recursion_limit();
    let value = limit
        .seed::<T>()
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// bincode's limit is a const generic, so the bound is picked from a few tiers: a decode may
/// claim (and so allocate) at most 64 KiB, or 16 times the body, whichever is larger.
fn decode_bincode<T: DeserializeOwned>(body: &[u8], limit: &DepthLimit) -> Result<T, String> {
    const KIB: usize = 1024;
    let result = if body.len() <= 4 * KIB {
        decode_limited::<T, { 64 * KIB }>(body, limit)
    } else if body.len() <= 64 * KIB {
        decode_limited::<T, { 1024 * KIB }>(body, limit)
    } else if body.len() <= 1024 * KIB {
        decode_limited::<T, { 16 * 1024 * KIB }>(body, limit)
    } else {
        decode_limited::<T, { 256 * 1024 * KIB }>(body, limit)
    };
    result.map_err(|e| e.to_string())
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
    limit: &DepthLimit,
) -> Result<T, bincode::error::DecodeError> {
    let config = config::standard().with_limit::<LIMIT>();
    let (value, read) = bincode::serde::seed_decode_from_slice(limit.seed::<T>(), body, config)?;
    if read != body.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the payload",
            body.len() - read
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Payload {
        name: String,
        n: u64,
        items: Vec<u32>,
    }

    fn sample() -> Payload {
        Payload {
            name: "hello".into(),
            n: 42,
            items: vec![1, 2, 3],
        }
    }

    #[test]
    fn both_codecs_round_trip() {
        for codec in [Codec::Bincode, Codec::Json] {
            let body = codec.encode(&sample()).unwrap();
            assert_eq!(codec.decode::<Payload>(&body).unwrap(), sample());
        }
    }

    #[test]
    fn content_types_map_to_codecs() {
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Codec::Json
        );
        assert_eq!(Codec::from_content_type(None).unwrap(), Codec::Json);
        assert_eq!(
            Codec::from_content_type(Some(BINCODE)).unwrap(),
            Codec::Bincode
        );
        assert!(matches!(
            Codec::from_content_type(Some("text/xml")),
            Err(CodecError::UnsupportedContentType(t)) if t == "text/xml"
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = Codec::Bincode.encode(&sample()).unwrap();
        body.push(0);
        assert!(Codec::Bincode.decode::<Payload>(&body).is_err());
    }

    #[test]
    fn hostile_length_prefix_is_refused_without_allocating() {
        // A String whose varint length prefix claims u64::MAX / 2 bytes, then nothing.
        let mut body = vec![253u8];
        body.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = Codec::Bincode.decode::<String>(&body).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        // A claim just over the tier's limit is refused too.
        let mut body = vec![252u8];
        body.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(Codec::Bincode.decode::<Vec<u8>>(&body).is_err());
    }

    /// A payload type that contains itself, as expression and tree types do.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Expr {
        Lit(i64),
        Neg(Box<Expr>),
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Node {
        children: Vec<Node>,
    }

    /// `Neg(Neg(...Lit(0)))` with `negs` Negs, hand-encoded (encoding it would recurse too).
    fn nested_expr(codec: Codec, negs: usize) -> Vec<u8> {
        match codec {
            // Variant indices as varints: Neg = 1, Lit = 0, then Lit's 0.
            Codec::Bincode => [vec![1u8; negs], vec![0, 0]].concat(),
            Codec::Json => format!(
                r#"{}{{"Lit":0}}{}"#,
                r#"{"Neg":"#.repeat(negs),
                "}".repeat(negs)
            )
            .into_bytes(),
        }
    }

    /// Runs `f` on a thread with a tokio worker thread's stack (2 MiB), as the worker would.
    fn on_worker_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(f)
            .expect("a thread starts")
            .join()
            .expect("the decode does not panic")
    }

    #[test]
    fn payloads_nest_up_to_the_limit_in_both_codecs() {
        assert_eq!(Codec::MAX_DEPTH, 128);
        for codec in [Codec::Bincode, Codec::Json] {
            // Each variant is a level: 127 Negs and the Lit make 128.
            let deepest = codec
                .decode::<Expr>(&nested_expr(codec, Codec::MAX_DEPTH - 1))
                .unwrap();
            let mut levels = 1;
            let mut expr = &deepest;
            while let Expr::Neg(inner) = expr {
                levels += 1;
                expr = inner;
            }
            assert_eq!(levels, Codec::MAX_DEPTH, "{codec:?}");
            let err = codec
                .decode::<Expr>(&nested_expr(codec, Codec::MAX_DEPTH))
                .unwrap_err();
            assert!(matches!(err, CodecError::TooDeep(128)), "{codec:?}: {err}");
            assert_eq!(
                err.to_string(),
                "payload does not decode: it nests deeper than the limit of 128 levels"
            );
        }
    }

    #[test]
    fn a_payload_nested_100_000_levels_is_refused_without_overflowing() {
        for codec in [Codec::Bincode, Codec::Json] {
            let err = on_worker_stack(move || {
                codec
                    .decode::<Expr>(&nested_expr(codec, 100_000))
                    .unwrap_err()
            });
            assert!(matches!(err, CodecError::TooDeep(128)), "{codec:?}: {err}");
        }
        // Nested through a struct and a Vec: `Node { children: [Node { children: [...] }] }`.
        let bincode = [vec![1u8; 100_000], vec![0]].concat();
        let json = format!(
            "{}[]{}",
            r#"{"children":["#.repeat(100_000),
            "]}".repeat(100_000)
        );
        for (codec, body) in [(Codec::Bincode, bincode), (Codec::Json, json.into_bytes())] {
            let err = on_worker_stack(move || codec.decode::<Node>(&body).unwrap_err());
            assert!(matches!(err, CodecError::TooDeep(128)), "{codec:?}: {err}");
        }
        // Self-describing JSON values and payloads buffered by serde (untagged enums) too.
        let brackets = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = on_worker_stack(move || {
            Codec::Json
                .decode::<serde_json::Value>(brackets.as_bytes())
                .unwrap_err()
        });
        assert!(matches!(err, CodecError::TooDeep(128)), "{err}");
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)] // only decoded
        enum Loose {
            Leaf(u32),
            List(Vec<Loose>),
        }
        let brackets = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = on_worker_stack(move || {
            Codec::Json
                .decode::<Loose>(brackets.as_bytes())
                .unwrap_err()
        });
        assert!(matches!(err, CodecError::TooDeep(128)), "{err}");
    }

    #[test]
    fn other_errors_are_not_depth_errors() {
        // Shallow garbage fails as a decode error, in both codecs.
        let err = Codec::Bincode.decode::<Expr>(&[7, 0]).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        let err = Codec::Json
            .decode::<Expr>(br#"{"Neg":{"Lit":"x"}}"#)
            .unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        let err = Codec::Json.decode::<Expr>(br#"{"Lit":1} 2"#).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }
}
