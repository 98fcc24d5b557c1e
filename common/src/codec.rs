//! Payload codecs: bincode (compact, Rust to Rust) and JSON (any language). A message's
//! `content_type` names its codec, and the worker decodes either into the handler's type.
//!
//! All bincode use lives here, so the crate can be swapped without touching the rest.

use bincode::config;
use serde::{de::DeserializeOwned, Serialize};

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
}

const BINCODE: &str = "application/x-bincode";
const JSON: &str = "application/json";

impl Codec {
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
    /// allocate gigabytes.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode => decode_bincode(body),
            Codec::Json => {
                serde_json::from_slice(body).map_err(|e| CodecError::Decode(e.to_string()))
            }
        }
    }
}

/// bincode's limit is a const generic, so the bound is picked from a few tiers: a decode may
/// claim (and so allocate) at most 64 KiB, or 16 times the body, whichever is larger.
fn decode_bincode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    const KIB: usize = 1024;
    let result = if body.len() <= 4 * KIB {
        decode_limited::<T, { 64 * KIB }>(body)
    } else if body.len() <= 64 * KIB {
        decode_limited::<T, { 1024 * KIB }>(body)
    } else if body.len() <= 1024 * KIB {
        decode_limited::<T, { 16 * 1024 * KIB }>(body)
    } else {
        decode_limited::<T, { 256 * 1024 * KIB }>(body)
    };
    result.map_err(|e| CodecError::Decode(e.to_string()))
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    let config = config::standard().with_limit::<LIMIT>();
    let (value, read) = bincode::serde::decode_from_slice(body, config)?;
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
}
