//! A handler's return value. It stays as the handler's own type until something asks for it:
//! the `succeeded` event and a waiting caller (`Publisher::call`) both carry it as JSON, under
//! the worker's `--max-result-bytes` limit. A handler returning `()` costs nothing here: a box
//! of a zero-sized value allocates nothing, and `null` is carried as no result at all.

use serde::Serialize;
use serde_json::value::RawValue;
use std::io;

/// A value a handler returned, not yet serialized; `None` for `()`, which has nothing to
/// carry (most handlers: no serializing, no allocation, on the per-task path).
pub(crate) struct Output(Option<Box<dyn Erased>>);

trait Erased: Send {
    fn write(&self, out: &mut Limited) -> serde_json::Result<()>;
}

impl<T: Serialize + Send> Erased for T {
    fn write(&self, out: &mut Limited) -> serde_json::Result<()> {
        serde_json::to_writer(out, self)
    }
}

/// A handler's result as a record carries it.
#[derive(Debug)]
pub(crate) enum Carried {
    /// The handler returned nothing worth carrying (`()`, or anything that serializes to
    /// `null`).
    Nothing,
    /// The result, as JSON.
    Json(Box<RawValue>),
    /// The result could not be carried (too large, or it did not serialize): why. The task
    /// succeeded all the same.
    Refused(String),
}

impl Output {
    pub(crate) fn new<T: Serialize + Send + 'static>(value: T) -> Self {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<()>() {
            return Output(None);
        }
        Output(Some(Box::new(value)))
    }

    /// The result as JSON of at most `limit` bytes. Serializing stops as soon as it passes
    /// the limit, so an oversized result costs at most `limit` bytes of work.
    pub(crate) fn to_json(&self, limit: usize) -> Carried {
        let Some(value) = &self.0 else {
            return Carried::Nothing;
        };
        let mut out = Limited {
            bytes: Vec::new(),
            limit,
        };
        if let Err(error) = value.write(&mut out) {
            return Carried::Refused(if error.is_io() {
                format!("the result is larger than the limit of {limit} bytes (--max-result-bytes)")
            } else {
                format!("the result did not serialize to JSON: {error}")
            });
        }
        if out.bytes == b"null" {
            return Carried::Nothing;
        }
        // serde_json writes valid UTF-8 JSON; reading it back as a raw value checks it once
        // more, which costs little next to writing it.
        match String::from_utf8(out.bytes).map_err(|e| e.to_string()) {
            Ok(json) => match RawValue::from_string(json) {
                Ok(raw) => Carried::Json(raw),
                Err(error) => Carried::Refused(format!("the result is not valid JSON: {error}")),
            },
            Err(error) => Carried::Refused(format!("the result is not UTF-8: {error}")),
        }
    }

    /// The result as `R`, for tests that run a handler without a broker.
    pub(crate) fn decode<R: serde::de::DeserializeOwned>(&self) -> serde_json::Result<R> {
        let mut out = Limited {
            bytes: b"null".to_vec(),
            limit: usize::MAX,
        };
        if let Some(value) = &self.0 {
            out.bytes.clear();
            value.write(&mut out)?;
        }
        serde_json::from_slice(&out.bytes)
    }
}

/// A buffer that refuses to grow past its limit.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
}

impl io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(io::Error::other("over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn unit_is_nothing_and_values_are_json() {
        assert!(matches!(Output::new(()).to_json(10), Carried::Nothing));
        assert!(matches!(
            Output::new(None::<u32>).to_json(10),
            Carried::Nothing
        ));
        match Output::new(vec![1, 2, 3]).to_json(100) {
            Carried::Json(raw) => assert_eq!(raw.get(), "[1,2,3]"),
            other => panic!("{other:?}"),
        }
        assert_eq!(Output::new(7u64).decode::<u64>().unwrap(), 7);
        Output::new(()).decode::<()>().unwrap();
    }

    #[test]
    fn oversized_and_unserializable_results_are_refused_with_a_reason() {
        let Carried::Refused(why) = Output::new("x".repeat(100)).to_json(50) else {
            panic!("not refused");
        };
        assert!(why.contains("limit of 50 bytes"), "{why}");
        // JSON object keys must be strings.
        let map = HashMap::from([((1, 2), 3)]);
        let Carried::Refused(why) = Output::new(map).to_json(100) else {
            panic!("not refused");
        };
        assert!(why.contains("did not serialize"), "{why}");
    }
}
