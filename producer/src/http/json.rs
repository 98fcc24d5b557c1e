//! The JSON body of a `/v1` request: `Content-Type: application/json` (or `+json`), parsed
//! strictly (an object with the same key twice is refused, rather than silently keeping the
//! last value as most parsers do), then deserialized into the request type with every
//! failure answered as an [`ApiError`] that names the field at fault.

use super::error::{ApiError, FieldError};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// A JSON body deserialized into `T`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            let message = "the request body must be JSON with `Content-Type: application/json`";
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let message = match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit".into(),
                _ => e.body_text(),
            };
            ApiError::new(e.status(), message)
        })?;
        read_json(&bytes).map(JsonBody)
    }
}

/// Parses a body strictly and deserializes it into `T`, naming the field at fault.
pub(crate) fn read_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_strict(bytes)?;
    serde_path_to_error::deserialize(value)
        .map_err(|e| field_error(&e.path().to_string(), &e.inner().to_string()).into())
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// Parses the whole body as one JSON value, refusing duplicate keys.
fn parse_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    let not_json = |e: &serde_json::Error| {
        let message = format!("the request body is not valid JSON: {e}");
        ApiError::new(StatusCode::BAD_REQUEST, message)
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let Strict(value) = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        if inner.is_data() {
            field_error(&e.path().to_string(), &inner.to_string()).into()
        } else {
            not_json(inner)
        }
    })?;
    deserializer.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

fn field_error(path: &str, inner: &str) -> FieldError {
    let field = field_of(path, inner);
    let message = match field.as_str() {
        "" => format!("the request body does not match the schema: {inner}"),
        field => format!("{field}: {inner}"),
    };
    FieldError::new(field, message)
}

/// A JSON value in which no object has a key twice.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{key}`: a key may appear only once in an object"
                )));
            }
            object.insert(key, value);
        }
        Ok(Strict(Value::Object(object)))
    }
}

/// The field a deserialization error is about: its path, or for an error on an object
/// itself (a missing field) the field named in serde's message appended to it.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `", "duplicate key `"]
        .into_iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => String::new(),
        // An unknown field's path already ends with it.
        (path, Some(name)) if path != name && !path.ends_with(&format!(".{name}")) => {
            format!("{path}.{name}")
        }
        (path, _) => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_from_serde_errors() {
        assert_eq!(field_of("priority", "invalid type"), "priority");
        assert_eq!(field_of(".", "missing field `tasks`"), "tasks");
        assert_eq!(
            field_of("dealy", "unknown field `dealy`, expected"),
            "dealy"
        );
        assert_eq!(
            field_of("tasks[2].x", "unknown field `x`, expected ..."),
            "tasks[2].x"
        );
        assert_eq!(
            field_of("tasks[2]", "missing field `task`"),
            "tasks[2].task"
        );
        assert_eq!(field_of("tasks[2].delay", "bad"), "tasks[2].delay");
    }

    #[test]
    fn duplicate_keys_are_refused_and_named() {
        let field = |json: &str| parse_strict(json.as_bytes()).unwrap_err().body.field;
        assert_eq!(
            field(r#"{"task": "a", "task": "b"}"#).as_deref(),
            Some("task")
        );
        assert_eq!(
            field(r#"{"tasks": [{}, {"payload": {"a": 1, "a": 1}}]}"#).as_deref(),
            Some("tasks[1].payload.a")
        );
        assert_eq!(field(r#"{"task": "a"} {}"#), None);
        assert_eq!(field(r#"{"task": "#), None);
        let value = parse_strict(br#"{"a": [1, -2, 0.5, "x", null, true, {"b": {}}]}"#);
        assert_eq!(
            value.unwrap(),
            serde_json::json!({"a": [1, -2, 0.5, "x", null, true, {"b": {}}]})
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        let is = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(is("application/json"));
        assert!(is("Application/JSON; charset=utf-8"));
        assert!(is("application/vnd.warren+json"));
        assert!(!is("text/plain"));
        assert!(!is("application/jsonx"));
        assert!(!is("text/x+json"));
    }
}
