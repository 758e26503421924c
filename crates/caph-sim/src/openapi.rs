//! Checks recorded API answers against the response schemas of an OpenAPI 3.0 description.
//!
//! The simulator is only as good as its likeness to the real service. This module holds its
//! answers against a description nobody here wrote (`shared/reference/hcloud-openapi.json`):
//!
//! ```no_run
//! # fn demo(sim: &caph_sim::hcloud::HcloudSim) -> Result<(), caph_sim::openapi::OpenApiError> {
//! let validator = caph_sim::openapi::Validator::load("../shared/reference/hcloud-openapi.json")?;
//! let violations = validator.check_all(&sim.recorded_responses());
//! assert!(violations.is_empty(), "{violations:#?}");
//! # Ok(()) }
//! ```
//!
//! Supported schema keywords: `$ref` (local JSON pointers), `type`, `nullable`, `enum`, `required`,
//! `properties`, `additionalProperties` (false or a schema), `items`, `allOf`, `oneOf`, `anyOf`,
//! `minimum`, `maximum`, and `format: date-time`. `pattern` is not checked (no regex engine here).
//! A value outside an `enum` is reported as [`ViolationKind::UnknownEnumValue`]: a simulator must
//! not send one, while clients must still tolerate them from the live service.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::hcloud::RecordedResponse;

/// Why a description could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// The file could not be read.
    #[error("cannot read OpenAPI description {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("OpenAPI description {path} is not valid JSON")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The document has no operations.
    #[error("OpenAPI description has no `paths` object")]
    NoPaths,
}

/// What kind of mismatch a [`Violation`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// The method and route are not in the description.
    UnknownOperation,
    /// The status is not documented for the operation (nor a matching `4xx`/`5xx`/`default`).
    UndocumentedStatus,
    /// A body where none is documented, or none where one is.
    Body,
    /// The body does not match the schema.
    Schema,
    /// A string outside the schema's `enum`.
    UnknownEnumValue,
}

/// One mismatch between an answer and the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// HTTP method of the answer.
    pub method: String,
    /// Route template of the answer.
    pub route: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// JSON pointer into the body, e.g. `/server/public_net/ipv4`.
    pub pointer: String,
    /// What kind of mismatch.
    pub kind: ViolationKind,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} {} {} at '{}': {}",
            self.method, self.route, self.status, self.pointer, self.message
        )
    }
}

/// A loaded description.
#[derive(Debug, Clone)]
pub struct Validator {
    document: Value,
}

/// How deep `$ref` chains and nesting may go before the check gives up (the descriptions we
/// know nest below 20; a cycle would otherwise recurse forever).
const MAX_DEPTH: usize = 64;

struct Issue {
    pointer: String,
    kind: ViolationKind,
    message: String,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(number) => {
                number.is_i64()
                    || number.is_u64()
                    || number.as_f64().is_some_and(|float| float.fract() == 0.0)
            }
            _ => false,
        },
        // An unknown type name in the description: nothing to hold the value to.
        _ => true,
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_date_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    if bytes.len() < 20
        || !digits(0..4)
        || bytes[4] != b'-'
        || !digits(5..7)
        || bytes[7] != b'-'
        || !digits(8..10)
        || !matches!(bytes[10], b'T' | b't')
        || !digits(11..13)
        || bytes[13] != b':'
        || !digits(14..16)
        || bytes[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 {
            return false;
        }
        rest = &fraction[length..];
    }
    if rest == "Z" || rest == "z" {
        return true;
    }
    let offset = rest.as_bytes();
    offset.len() == 6
        && matches!(offset[0], b'+' | b'-')
        && offset[1..3].iter().all(u8::is_ascii_digit)
        && offset[3] == b':'
        && offset[4..6].iter().all(u8::is_ascii_digit)
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Validator {
    /// Loads a description from a JSON file.
    pub fn load(path: impl AsRef<Path>) -> Result<Validator, OpenApiError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| OpenApiError::Read {
            path: path.to_owned(),
            source,
        })?;
        let document = serde_json::from_str(&text).map_err(|source| OpenApiError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Validator::from_document(document)
    }

    /// Uses an already parsed description.
    pub fn from_document(document: Value) -> Result<Validator, OpenApiError> {
        if !document.get("paths").is_some_and(Value::is_object) {
            return Err(OpenApiError::NoPaths);
        }
        Ok(Validator { document })
    }

    /// Checks every recorded answer.
    pub fn check_all(&self, responses: &[RecordedResponse]) -> Vec<Violation> {
        responses
            .iter()
            .flat_map(|response| {
                self.check(
                    &response.method,
                    &response.route,
                    response.status,
                    response.body.as_ref(),
                )
            })
            .collect()
    }

    /// Checks one answer: `route` is a template as in the description (`/servers/{id}`).
    pub fn check(
        &self,
        method: &str,
        route: &str,
        status: u16,
        body: Option<&Value>,
    ) -> Vec<Violation> {
        let violation = |kind: ViolationKind, pointer: String, message: String| Violation {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
            pointer,
            kind,
            message,
        };
        let Some(operation) = self
            .document
            .get("paths")
            .and_then(|paths| paths.get(route))
            .and_then(|path| path.get(method.to_ascii_lowercase()))
        else {
            return vec![violation(
                ViolationKind::UnknownOperation,
                String::new(),
                "operation is not in the description".into(),
            )];
        };
        let responses = operation.get("responses");
        let class = format!("{}xx", status / 100);
        let Some(response) = [status.to_string(), class, "default".into()]
            .iter()
            .find_map(|key| responses.and_then(|responses| responses.get(key)))
        else {
            return vec![violation(
                ViolationKind::UndocumentedStatus,
                String::new(),
                format!("status {status} is not documented"),
            )];
        };
        let response = self.resolve(response);
        let schema = response
            .get("content")
            .and_then(|content| content.get("application/json"))
            .and_then(|media| media.get("schema"));
        match (schema, body) {
            (None, None) => Vec::new(),
            (None, Some(_)) => vec![violation(
                ViolationKind::Body,
                String::new(),
                "a body was sent where none is documented".into(),
            )],
            (Some(_), None) => vec![violation(
                ViolationKind::Body,
                String::new(),
                "no body was sent where one is documented".into(),
            )],
            (Some(schema), Some(body)) => {
                let mut issues = Vec::new();
                self.validate(schema, body, "", 0, &mut issues);
                issues
                    .into_iter()
                    .map(|issue| violation(issue.kind, issue.pointer, issue.message))
                    .collect()
            }
        }
    }

    /// Follows a local `$ref` (`#/components/...`), or returns the node itself.
    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        let mut node = node;
        for _ in 0..MAX_DEPTH {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
                return node;
            };
            let Some(target) = reference
                .strip_prefix('#')
                .and_then(|pointer| self.document.pointer(pointer))
            else {
                return node;
            };
            node = target;
        }
        node
    }

    fn validate(
        &self,
        schema: &Value,
        value: &Value,
        pointer: &str,
        depth: usize,
        issues: &mut Vec<Issue>,
    ) {
        let issue = |kind: ViolationKind, message: String| Issue {
            pointer: pointer.to_owned(),
            kind,
            message,
        };
        if depth > MAX_DEPTH {
            issues.push(issue(
                ViolationKind::Schema,
                "schema nests too deeply to check".into(),
            ));
            return;
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let resolved = self.resolve(schema);
            if std::ptr::eq(resolved, schema) {
                issues.push(issue(
                    ViolationKind::Schema,
                    format!("unresolvable $ref {reference}"),
                ));
                return;
            }
            self.validate(resolved, value, pointer, depth + 1, issues);
            return;
        }
        if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.validate(part, value, pointer, depth + 1, issues);
            }
        }
        for (keyword, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(parts) = schema.get(keyword).and_then(Value::as_array) {
                let matching = parts
                    .iter()
                    .filter(|part| {
                        let mut trial = Vec::new();
                        self.validate(part, value, pointer, depth + 1, &mut trial);
                        trial.is_empty()
                    })
                    .count();
                let fine = if exactly_one {
                    matching == 1
                } else {
                    matching >= 1
                };
                if !fine {
                    issues.push(issue(
                        ViolationKind::Schema,
                        format!(
                            "{keyword}: {matching} of {} alternatives match",
                            parts.len()
                        ),
                    ));
                }
            }
        }
        if let Some(expected) = schema.get("type").and_then(Value::as_str) {
            if !type_matches(expected, value) {
                issues.push(issue(
                    ViolationKind::Schema,
                    format!("expected {expected}, found {}", type_name(value)),
                ));
                return;
            }
        } else if value.is_null()
            && (schema.get("properties").is_some() || schema.get("items").is_some())
        {
            issues.push(issue(
                ViolationKind::Schema,
                "null where the schema is not nullable".into(),
            ));
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            issues.push(issue(
                ViolationKind::UnknownEnumValue,
                format!("{value} is not one of {}", Value::Array(allowed.clone())),
            ));
        }
        if let Some(number) = value.as_f64() {
            if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
                && number > maximum
            {
                issues.push(issue(
                    ViolationKind::Schema,
                    format!("{number} is above the maximum {maximum}"),
                ));
            }
            if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
                && number < minimum
            {
                issues.push(issue(
                    ViolationKind::Schema,
                    format!("{number} is below the minimum {minimum}"),
                ));
            }
        }
        if let (Some("date-time"), Some(text)) =
            (schema.get("format").and_then(Value::as_str), value.as_str())
            && !is_date_time(text)
        {
            issues.push(issue(
                ViolationKind::Schema,
                format!("'{text}' is not an RFC 3339 date-time"),
            ));
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(name) {
                        issues.push(issue(
                            ViolationKind::Schema,
                            format!("required property '{name}' is missing"),
                        ));
                    }
                }
            }
            for (name, member) in object {
                let member_pointer = format!("{pointer}/{}", escape_pointer(name));
                if let Some(property) = properties.and_then(|properties| properties.get(name)) {
                    self.validate(property, member, &member_pointer, depth + 1, issues);
                    continue;
                }
                match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => issues.push(Issue {
                        pointer: member_pointer,
                        kind: ViolationKind::Schema,
                        message: format!("property '{name}' is not allowed"),
                    }),
                    Some(extra) if extra.is_object() => {
                        self.validate(extra, member, &member_pointer, depth + 1, issues);
                    }
                    _ => {}
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (index, item) in array.iter().enumerate() {
                self.validate(
                    items,
                    item,
                    &format!("{pointer}/{index}"),
                    depth + 1,
                    issues,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> Validator {
        let document = json!({
            "paths": {
                "/things/{id}": {"get": {"responses": {
                    "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/wrapper"}}}},
                    "204": {"description": "gone"},
                    "4xx": {"content": {"application/json": {"schema": {"type": "object", "required": ["error"]}}}}
                }}}
            },
            "components": {"schemas": {
                "wrapper": {"type": "object", "required": ["thing"], "properties": {"thing": {"$ref": "#/components/schemas/thing"}}},
                "thing": {
                    "type": "object",
                    "required": ["id", "status", "parent"],
                    "additionalProperties": false,
                    "properties": {
                        "id": {"type": "integer", "maximum": 100},
                        "status": {"type": "string", "enum": ["on", "off"]},
                        "parent": {"allOf": [{"$ref": "#/components/schemas/parent"}], "nullable": true},
                        "when": {"type": "string", "format": "date-time"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]}
                    }
                },
                "parent": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
            }}
        });
        Validator::from_document(document).expect("document")
    }

    fn messages(body: Value) -> Vec<String> {
        validator()
            .check("GET", "/things/{id}", 200, Some(&body))
            .iter()
            .map(|violation| format!("{}: {}", violation.pointer, violation.message))
            .collect()
    }

    #[test]
    fn valid_body_passes() {
        let body = json!({"thing": {"id": 1, "status": "on", "parent": null, "when": "2026-01-01T00:00:00+00:00", "tags": ["a"], "either": 3}});
        assert_eq!(messages(body), Vec::<String>::new());
    }

    #[test]
    fn each_keyword_reports() {
        let body = json!({"thing": {"id": 101, "status": "maybe", "parent": {"id": "x"}, "when": "yesterday", "tags": [1], "either": true, "extra": 1}});
        // Members are visited in key order.
        assert_eq!(
            messages(body),
            vec![
                "/thing/either: oneOf: 0 of 2 alternatives match",
                "/thing/extra: property 'extra' is not allowed",
                "/thing/id: 101 is above the maximum 100",
                "/thing/parent/id: expected integer, found string",
                "/thing/status: \"maybe\" is not one of [\"on\",\"off\"]",
                "/thing/tags/0: expected string, found integer",
                "/thing/when: 'yesterday' is not an RFC 3339 date-time",
            ]
        );
        let missing = json!({"thing": {"id": 1}});
        assert_eq!(
            messages(missing),
            vec![
                "/thing: required property 'status' is missing",
                "/thing: required property 'parent' is missing",
            ]
        );
    }

    #[test]
    fn statuses_bodies_and_operations() {
        let validator = validator();
        assert!(validator.check("GET", "/things/{id}", 204, None).is_empty());
        assert_eq!(
            validator.check("GET", "/things/{id}", 204, Some(&json!({})))[0].kind,
            ViolationKind::Body
        );
        assert!(
            validator
                .check("GET", "/things/{id}", 404, Some(&json!({"error": {}})))
                .is_empty()
        );
        assert_eq!(
            validator.check("GET", "/things/{id}", 500, None)[0].kind,
            ViolationKind::UndocumentedStatus
        );
        assert_eq!(
            validator.check("POST", "/things/{id}", 200, None)[0].kind,
            ViolationKind::UnknownOperation
        );
    }

    #[test]
    fn date_times() {
        assert!(is_date_time("2016-01-30T23:55:00+00:00"));
        assert!(is_date_time("2016-01-30T23:55:00.123Z"));
        assert!(!is_date_time("2016-01-30 23:55:00Z"));
        assert!(!is_date_time("2016-01-30T23:55:00"));
    }
}
