//! A lightweight conformance check against `docs/openapi.yaml`: every answer the tests get
//! must be a documented (method, path, status) with the documented content type, and its
//! JSON body must have the documented required fields with the documented types. The checker
//! records the pairs it saw, so a test can assert that every documented pair was produced.

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Mutex;
use yaml_rust2::{Yaml, YamlLoader};

/// A documented answer: method, path, status.
pub type Pair = (String, String, u16);

/// The parsed spec and the answers checked against it.
pub struct Spec {
    doc: Value,
    seen: Mutex<BTreeSet<Pair>>,
}

impl Spec {
    /// Loads `docs/openapi.yaml`.
    pub fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml is readable");
        let docs = YamlLoader::load_from_str(&text).expect("docs/openapi.yaml is YAML");
        Spec {
            doc: to_json(&docs[0]),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Every documented pair.
    pub fn documented(&self) -> BTreeSet<Pair> {
        let mut pairs = BTreeSet::new();
        for (path, ops) in self.doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                for status in op["responses"].as_object().expect("responses").keys() {
                    let status = status.parse().expect("numeric status");
                    pairs.insert((method.to_uppercase(), path.clone(), status));
                }
            }
        }
        pairs
    }

    /// The pairs checked so far.
    pub fn seen(&self) -> BTreeSet<Pair> {
        self.seen.lock().unwrap().clone()
    }

    /// The documented path `path` (its query left out) matches: itself, or a template whose
    /// `{parameter}` segments match any one non-empty segment.
    fn route(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.doc["paths"].as_object().expect("paths");
        if paths.contains_key(path) {
            return path.to_owned();
        }
        let segments: Vec<&str> = path.split('/').collect();
        let matches = |template: &str| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    part == segment || (part.starts_with('{') && !segment.is_empty())
                })
        };
        let found = paths.keys().find(|template| matches(template));
        found.cloned().unwrap_or_else(|| path.to_owned())
    }

    /// Checks one answer; panics with the reason if it does not match the spec.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &str) {
        let path = &self.route(path);
        let what = format!("{method} {path} -> {status}");
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{what}: the route is not documented");
        let response = self.resolve(&op["responses"][status.to_string()]);
        assert!(response.is_object(), "{what}: the status is not documented");
        let content = response["content"].as_object().expect("documented content");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let schema = &content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {media} is not documented"))["schema"];
        if media == "application/json" {
            let body: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body}"));
            self.conforms(schema, &body, &what);
        }
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_owned(), path.to_owned(), status));
    }

    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node["$ref"].as_str() {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                self.resolve(self.doc.pointer(pointer).expect("$ref resolves"))
            }
            None => node,
        }
    }

    /// Checks `value` against the parts of `schema` the spec uses: `type`, `nullable`,
    /// `required`, `properties`, `additionalProperties: false`, `items`, `allOf`, `oneOf`.
    fn conforms(&self, schema: &Value, value: &Value, at: &str) {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == Value::Bool(true) {
            return;
        }
        if let Some(all) = schema["allOf"].as_array() {
            all.iter().for_each(|s| self.conforms(s, value, at));
        }
        if let Some(kind) = schema["type"].as_str() {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            assert!(ok, "{at}: expected {kind}, got {value}");
        }
        if let Some(object) = value.as_object() {
            self.conforms_object(schema, object, at);
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, v) in values.iter().enumerate() {
                self.conforms(items, v, &format!("{at}[{i}]"));
            }
        }
    }

    fn conforms_object(&self, schema: &Value, object: &Map<String, Value>, at: &str) {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().expect("required names are strings");
            assert!(
                object.contains_key(field),
                "{at}: required field `{field}` missing in {object:?}"
            );
        }
        let properties = schema["properties"].as_object();
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => self.conforms(property, v, &format!("{at}.{name}")),
                None => assert!(
                    schema["additionalProperties"] != Value::Bool(false) && properties.is_none(),
                    "{at}: field `{name}` is not documented"
                ),
            }
        }
    }
}

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(s) => s.parse::<f64>().map_or(Value::Null, Value::from),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => items.iter().map(to_json).collect(),
        Yaml::Hash(hash) => hash
            .iter()
            .map(|(k, v)| {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (key, to_json(v))
            })
            .collect::<Map<_, _>>()
            .into(),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}
