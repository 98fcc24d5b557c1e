//! What the fuzz targets share: AMQP messages written as JSON (so that the seed corpora are
//! the docs' examples, readable), and the representative payload types decoded by the
//! `payload` target.

use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A received message as JSON: its AMQP properties, its headers with their AMQP types, and
/// its body. For example (docs/wire-format.md §9):
///
/// ```json
/// {"type": "demo.echo", "message_id": "0192...", "content_type": "application/json",
///  "headers": {"x-warren-attempt": {"LongInt": 2}}, "body": "{\"text\": \"hi\"}"}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    #[serde(rename = "type")]
    kind: Option<String>,
    message_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<String>,
    app_id: Option<String>,
    user_id: Option<String>,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    timestamp: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, Value>,
    /// The body, as text.
    #[serde(default)]
    pub body: String,
}

/// A header value, tagged with its AMQP type as lapin names it.
#[derive(Debug, Deserialize)]
pub enum Value {
    Boolean(bool),
    ShortShortInt(i8),
    ShortShortUInt(u8),
    ShortInt(i16),
    ShortUInt(u16),
    LongInt(i32),
    LongUInt(u32),
    LongLongInt(i64),
    Float(f32),
    Double(f64),
    ShortString(String),
    LongString(String),
    Timestamp(u64),
    FieldArray(Vec<Value>),
    FieldTable(BTreeMap<String, Value>),
    ByteArray(Vec<u8>),
    Void,
}

impl Message {
    /// Reads a message written as JSON; `None` when the input is not one, or holds a string
    /// AMQP cannot carry (a short string over 255 bytes).
    pub fn parse(data: &[u8]) -> Option<Message> {
        serde_json::from_slice(data).ok()
    }

    /// The message's AMQP properties.
    pub fn properties(&self) -> Option<BasicProperties> {
        let mut props = BasicProperties::default();
        let strings = [
            (&self.kind, BasicProperties::with_type as fn(_, _) -> _),
            (&self.message_id, BasicProperties::with_message_id),
            (&self.content_type, BasicProperties::with_content_type),
            (
                &self.content_encoding,
                BasicProperties::with_content_encoding,
            ),
            (&self.correlation_id, BasicProperties::with_correlation_id),
            (&self.reply_to, BasicProperties::with_reply_to),
            (&self.expiration, BasicProperties::with_expiration),
            (&self.app_id, BasicProperties::with_app_id),
            (&self.user_id, BasicProperties::with_user_id),
        ];
        for (value, with) in strings {
            if let Some(value) = value {
                props = with(props, short(value)?);
            }
        }
        if let Some(mode) = self.delivery_mode {
            props = props.with_delivery_mode(mode);
        }
        if let Some(priority) = self.priority {
            props = props.with_priority(priority);
        }
        if let Some(timestamp) = self.timestamp {
            props = props.with_timestamp(timestamp);
        }
        if !self.headers.is_empty() {
            props = props.with_headers(table(&self.headers)?);
        }
        Some(props)
    }
}

fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s.to_owned()).ok()
}

fn table(entries: &BTreeMap<String, Value>) -> Option<FieldTable> {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(short(name)?, value.amqp()?);
    }
    Some(table)
}

impl Value {
    fn amqp(&self) -> Option<AMQPValue> {
        Some(match self {
            Value::Boolean(v) => AMQPValue::Boolean(*v),
            Value::ShortShortInt(v) => AMQPValue::ShortShortInt(*v),
            Value::ShortShortUInt(v) => AMQPValue::ShortShortUInt(*v),
            Value::ShortInt(v) => AMQPValue::ShortInt(*v),
            Value::ShortUInt(v) => AMQPValue::ShortUInt(*v),
            Value::LongInt(v) => AMQPValue::LongInt(*v),
            Value::LongUInt(v) => AMQPValue::LongUInt(*v),
            Value::LongLongInt(v) => AMQPValue::LongLongInt(*v),
            Value::Float(v) => AMQPValue::Float(*v),
            Value::Double(v) => AMQPValue::Double(*v),
            Value::ShortString(v) => AMQPValue::ShortString(short(v)?),
            Value::LongString(v) => AMQPValue::LongString(LongString::from(v.as_bytes())),
            Value::Timestamp(v) => AMQPValue::Timestamp(*v),
            Value::FieldArray(values) => {
                let values = values.iter().map(Value::amqp).collect::<Option<Vec<_>>>()?;
                AMQPValue::FieldArray(FieldArray::from(values))
            }
            Value::FieldTable(entries) => AMQPValue::FieldTable(table(entries)?),
            Value::ByteArray(v) => AMQPValue::ByteArray(ByteArray::from(v.clone())),
            Value::Void => AMQPValue::Void,
        })
    }
}

/// A payload type that contains itself, as expression types do.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Lit(i64),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Let {
        name: String,
        value: Box<Expr>,
        body: Box<Expr>,
    },
}

impl Expr {
    /// Levels of nesting, as the codecs count them (each variant is one, a struct variant
    /// two: the variant and its fields).
    pub fn depth(&self) -> usize {
        match self {
            Expr::Lit(_) => 1,
            Expr::Neg(e) => 1 + e.depth(),
            // A tuple variant's fields are a level of their own, like a struct's.
            Expr::Add(a, b) => 2 + a.depth().max(b.depth()),
            Expr::Let { value, body, .. } => 2 + value.depth().max(body.depth()),
        }
    }
}

/// A tree type that contains itself through a `Vec` in a struct.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub label: Option<String>,
    pub children: Vec<Node>,
}

impl Node {
    /// Levels of nesting: the struct, and the `Vec` of children (and `Some`) inside it.
    pub fn depth(&self) -> usize {
        let below = self.children.iter().map(Node::depth).max().unwrap_or(0);
        2 + below
    }
}

/// An ordinary business payload: strings, numbers, options, sequences, maps and enums.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub customer: String,
    pub lines: Vec<Line>,
    pub note: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub status: Status,
    pub total_cents: i64,
    pub express: bool,
}

/// A line of an [`Order`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub unit_cents: i64,
}

/// The state of an [`Order`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Status {
    New,
    Paid { at_ms: u64 },
    Shipped(String),
    Cancelled(Option<String>),
}
