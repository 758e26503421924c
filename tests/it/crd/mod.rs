//! Cluster API Provider Hetzner's CRDs, read at test time from `../shared/vendor/caph-crds/`
//! (never copied into this repository), and a check of a manifest against them as strict as
//! `kubectl apply --validate=strict` on a cluster with those CRDs:
//! - the document is decoded as kubectl decodes YAML ([`yaml`]): YAML 1.1 scalars, no key twice;
//! - `apiVersion` names the CRD's group and a served version, `kind` its kind;
//! - `metadata` passes the API server's object-metadata rules for custom resources (a name that
//!   is a DNS-1123 subdomain, known fields only, valid labels);
//! - the rest passes the OpenAPI v3 structural schema of **every served version**: every field
//!   known to the schema (unless it allows more), types, `enum`, `pattern`, `format`, required
//!   fields, lengths, bounds, item counts and list types.
//!
//! Schema keywords this check does not implement (CEL rules in `x-kubernetes-validations`,
//! say) are reported as violations rather than skipped, so a newer CRD cannot pass unchecked.

pub mod yaml;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// The CRD files this project's templates are checked against.
pub const CRD_FILES: [&str; 2] = [
    "infrastructure.cluster.x-k8s.io_hcloudmachinetemplates.yaml",
    "infrastructure.cluster.x-k8s.io_hetznerbaremetalmachinetemplates.yaml",
];

/// Where the CRDs are: `../shared/vendor/caph-crds` from the repository's root.
pub fn vendor_dir() -> PathBuf {
    crate::repo().join("../shared/vendor/caph-crds")
}

/// One CRD: its group, kind and versions.
#[derive(Debug, Clone)]
pub struct Crd {
    pub group: String,
    pub kind: String,
    pub versions: Vec<Version>,
}

/// One version of a CRD.
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub served: bool,
    pub schema: Value,
}

/// Every CRD of the vendored folder.
#[derive(Debug, Clone)]
pub struct Crds(pub Vec<Crd>);

impl Crds {
    /// Loads [`CRD_FILES`] from [`vendor_dir`]; `Err` says why they cannot be (for a SKIPPED line
    /// when the folder is absent).
    pub fn load() -> Result<Crds, String> {
        let dir = vendor_dir();
        if !dir.is_dir() {
            return Err(format!(
                "{} is absent (CAPH's CRDs are read from there, never copied)",
                dir.display()
            ));
        }
        let mut crds = Vec::new();
        for file in CRD_FILES {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            crds.push(Crd::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?);
        }
        Ok(Crds(crds))
    }

    /// Checks every document of `text`; one line per violation, empty when all pass.
    pub fn check(&self, text: &str) -> Vec<String> {
        let documents = match yaml::documents(text) {
            Ok(documents) => documents,
            Err(error) => return vec![error],
        };
        if documents.is_empty() {
            return vec!["no document".to_string()];
        }
        documents
            .iter()
            .enumerate()
            .flat_map(|(index, document)| {
                self.check_object(document)
                    .into_iter()
                    .map(move |violation| format!("document {}: {violation}", index + 1))
            })
            .collect()
    }

    /// Checks one decoded object.
    pub fn check_object(&self, object: &Value) -> Vec<String> {
        let Some(fields) = object.as_object() else {
            return vec![format!(
                "the document is {}, not an object",
                kind_of(object)
            )];
        };
        let (Some(api_version), Some(kind)) = (
            fields.get("apiVersion").and_then(Value::as_str),
            fields.get("kind").and_then(Value::as_str),
        ) else {
            return vec!["apiVersion and kind must both be strings".to_string()];
        };
        let Some((group, version)) = api_version.split_once('/') else {
            return vec![format!("apiVersion {api_version:?} is not group/version")];
        };
        let Some(crd) = self
            .0
            .iter()
            .find(|crd| crd.group == group && crd.kind == kind)
        else {
            return vec![format!("no CRD for kind {kind} in group {group}")];
        };
        let served: Vec<&Version> = crd.versions.iter().filter(|v| v.served).collect();
        let mut violations = Vec::new();
        if !served.iter().any(|v| v.name == version) {
            violations.push(format!(
                "{kind} is not served as {version}; served: {}",
                served
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        violations.extend(check_object_meta(fields.get("metadata")));
        for version in served {
            let mut errors = Vec::new();
            let mut body = fields.clone();
            body.insert(
                "apiVersion".to_string(),
                Value::String(format!("{group}/{}", version.name)),
            );
            // metadata is the API server's own type; checked above.
            body.remove("metadata");
            let mut schema = version.schema.clone();
            if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                properties.remove("metadata");
            }
            validate(&Value::Object(body), &schema, "", &mut errors);
            violations.extend(
                errors
                    .into_iter()
                    .map(|error| format!("{}: {error}", version.name)),
            );
        }
        violations
    }
}

impl Crd {
    /// Parses a CustomResourceDefinition document.
    pub fn parse(text: &str) -> Result<Crd, String> {
        let document = yaml::document(text)?;
        let spec = &document["spec"];
        let group = spec["group"].as_str().ok_or("no spec.group")?.to_string();
        let kind = spec["names"]["kind"]
            .as_str()
            .ok_or("no spec.names.kind")?
            .to_string();
        let versions = spec["versions"]
            .as_array()
            .ok_or("no spec.versions")?
            .iter()
            .map(|version| {
                Ok(Version {
                    name: version["name"]
                        .as_str()
                        .ok_or("a version without name")?
                        .to_string(),
                    served: version["served"]
                        .as_bool()
                        .ok_or("a version without served")?,
                    schema: version["schema"]["openAPIV3Schema"].clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if versions.iter().any(|version| !version.schema.is_object()) {
            return Err("a version without schema.openAPIV3Schema".to_string());
        }
        Ok(Crd {
            group,
            kind,
            versions,
        })
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Schema keywords that describe and do not constrain, or that are handled where their
/// parent is (`x-kubernetes-list-map-keys` with `x-kubernetes-list-type`).
const DESCRIPTIVE: &[&str] = &[
    "description",
    "default",
    "example",
    "title",
    "externalDocs",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
];

/// Keywords [`validate`] implements.
const IMPLEMENTED: &[&str] = &[
    "type",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "enum",
    "pattern",
    "format",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "anyOf",
    "allOf",
    "oneOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
];

/// Validates `value` at `path` against `schema`, adding one line per violation to `errors`.
pub fn validate(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "(root)" } else { path };
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{here}: the schema is not an object"));
        return;
    };
    for keyword in schema.keys() {
        if !IMPLEMENTED.contains(&keyword.as_str()) && !DESCRIPTIVE.contains(&keyword.as_str()) {
            errors.push(format!(
                "{here}: schema keyword {keyword} is not implemented by this check"
            ));
        }
    }
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if value.is_null() {
        if !flag("nullable") {
            errors.push(format!("{here}: null where the schema allows no null"));
        }
        return;
    }
    for combinator in ["allOf", "anyOf", "oneOf"] {
        let Some(branches) = schema.get(combinator).and_then(Value::as_array) else {
            continue;
        };
        let passing = branches
            .iter()
            .filter(|branch| {
                let mut inner = Vec::new();
                validate(value, branch, path, &mut inner);
                inner.is_empty()
            })
            .count();
        let ok = match combinator {
            "allOf" => passing == branches.len(),
            "anyOf" => passing >= 1,
            _ => passing == 1,
        };
        if !ok {
            errors.push(format!(
                "{here}: {passing} of {} {combinator} branches pass",
                branches.len()
            ));
        }
    }
    if let Some(negated) = schema.get("not") {
        let mut inner = Vec::new();
        validate(value, negated, path, &mut inner);
        if inner.is_empty() {
            errors.push(format!("{here}: matches a schema it must not"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{here}: {value} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_string() || value.as_i64().is_some() || value.as_u64().is_some()) {
            errors.push(format!(
                "{here}: {} where an int or a string goes",
                kind_of(value)
            ));
        }
    } else if let Some(wanted) = schema.get("type").and_then(Value::as_str) {
        let fits = match wanted {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.as_i64().is_some() || value.as_u64().is_some(),
            "number" => value.is_number(),
            other => {
                errors.push(format!("{here}: unknown schema type {other}"));
                return;
            }
        };
        if !fits {
            errors.push(format!("{here}: {} where {wanted} goes", kind_of(value)));
            return;
        }
    }
    match value {
        Value::String(text) => check_string(text, schema, here, errors),
        Value::Number(_) => check_number(value, schema, here, errors),
        Value::Array(items) => check_array(items, schema, path, errors),
        Value::Object(fields) => check_fields(fields, schema, path, errors),
        Value::Bool(_) | Value::Null => {}
    }
}

fn bound(schema: &Map<String, Value>, name: &str) -> Option<u64> {
    schema.get(name).and_then(Value::as_u64)
}

fn check_string(text: &str, schema: &Map<String, Value>, here: &str, errors: &mut Vec<String>) {
    // Lengths count characters (runes), as the API server's validator does.
    let length = text.chars().count() as u64;
    if let Some(min) = bound(schema, "minLength")
        && length < min
    {
        errors.push(format!("{here}: {text:?} is shorter than {min}"));
    }
    if let Some(max) = bound(schema, "maxLength")
        && length > max
    {
        errors.push(format!("{here}: {text:?} is longer than {max}"));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(expression) if !expression.is_match(text) => {
                errors.push(format!("{here}: {text:?} does not match {pattern}"));
            }
            Ok(_) => {}
            Err(error) => errors.push(format!(
                "{here}: pattern {pattern} does not compile: {error}"
            )),
        }
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let ok = match format {
            "date-time" => is_rfc3339(text),
            "byte" => {
                text.len().is_multiple_of(4)
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            }
            other => {
                errors.push(format!(
                    "{here}: string format {other} is not implemented by this check"
                ));
                true
            }
        };
        if !ok {
            errors.push(format!("{here}: {text:?} is not a {format}"));
        }
    }
}

fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(bytes.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19)
        && (text.ends_with('Z') || text.ends_with('z') || text[19..].contains(['+', '-']))
}

fn check_number(value: &Value, schema: &Map<String, Value>, here: &str, errors: &mut Vec<String>) {
    let number = value.as_f64().unwrap_or(f64::NAN);
    let limit = |name: &str| schema.get(name).and_then(Value::as_f64);
    let exclusive = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if let Some(min) = limit("minimum") {
        let below = if exclusive("exclusiveMinimum") {
            number <= min
        } else {
            number < min
        };
        if below {
            errors.push(format!("{here}: {value} is below the minimum {min}"));
        }
    }
    if let Some(max) = limit("maximum") {
        let above = if exclusive("exclusiveMaximum") {
            number >= max
        } else {
            number > max
        };
        if above {
            errors.push(format!("{here}: {value} is above the maximum {max}"));
        }
    }
    if let Some(step) = limit("multipleOf")
        && (number / step).fract() != 0.0
    {
        errors.push(format!("{here}: {value} is not a multiple of {step}"));
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let range = match format {
            "int32" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
            "int64" => Some((i64::MIN, i64::MAX)),
            "float" | "double" => None,
            other => {
                errors.push(format!(
                    "{here}: number format {other} is not implemented by this check"
                ));
                None
            }
        };
        if let Some((low, high)) = range
            && !value.as_i64().is_some_and(|n| (low..=high).contains(&n))
        {
            errors.push(format!("{here}: {value} is not an {format}"));
        }
    }
}

fn check_array(items: &[Value], schema: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "(root)" } else { path };
    let count = items.len() as u64;
    if let Some(min) = bound(schema, "minItems")
        && count < min
    {
        errors.push(format!("{here}: {count} items, fewer than {min}"));
    }
    if let Some(max) = bound(schema, "maxItems")
        && count > max
    {
        errors.push(format!("{here}: {count} items, more than {max}"));
    }
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    let unique = schema
        .get("uniqueItems")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || list_type == Some("set");
    if unique {
        for (index, item) in items.iter().enumerate() {
            if items[..index].contains(item) {
                errors.push(format!("{here}[{index}]: a duplicate of an earlier item"));
            }
        }
    }
    match list_type {
        None | Some("atomic" | "set") => {}
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (index, item) in items.iter().enumerate() {
                let identity: Vec<String> = keys.iter().map(|key| item[*key].to_string()).collect();
                if keys.iter().any(|key| item.get(*key).is_none()) {
                    errors.push(format!("{here}[{index}]: a map-list item needs {keys:?}"));
                } else if !seen.insert(identity) {
                    errors.push(format!(
                        "{here}[{index}]: the same {keys:?} as an earlier item"
                    ));
                }
            }
        }
        Some(other) => errors.push(format!(
            "{here}: list type {other} is not implemented by this check"
        )),
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            validate(item, item_schema, &format!("{path}[{index}]"), errors);
        }
    }
}

fn check_fields(
    fields: &Map<String, Value>,
    schema: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    let here = if path.is_empty() { "(root)" } else { path };
    let count = fields.len() as u64;
    if let Some(min) = bound(schema, "minProperties")
        && count < min
    {
        errors.push(format!("{here}: {count} fields, fewer than {min}"));
    }
    if let Some(max) = bound(schema, "maxProperties")
        && count > max
    {
        errors.push(format!("{here}: {count} fields, more than {max}"));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                errors.push(format!("{here}: the required field {name} is missing"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (name, field) in fields {
        let child = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if let Some(field_schema) = properties.and_then(|properties| properties.get(name)) {
            validate(field, field_schema, &child, errors);
            continue;
        }
        if embedded && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => {}
            Some(extra) if extra.is_object() => validate(field, extra, &child, errors),
            _ if preserve => {}
            _ => errors.push(format!(
                "{child}: unknown field (strict validation refuses it)"
            )),
        }
    }
}

/// The object-metadata rules the API server applies to a custom resource, for the fields a
/// manifest may set.
fn check_object_meta(metadata: Option<&Value>) -> Vec<String> {
    const KNOWN: &[&str] = &["name", "generateName", "namespace", "labels", "annotations"];
    let mut errors = Vec::new();
    let Some(metadata) = metadata else {
        return vec!["metadata is missing".to_string()];
    };
    let Some(fields) = metadata.as_object() else {
        return vec![format!("metadata is {}, not an object", kind_of(metadata))];
    };
    for name in fields.keys() {
        if !KNOWN.contains(&name.as_str()) {
            errors.push(format!(
                "metadata.{name}: unknown field (strict validation refuses it)"
            ));
        }
    }
    match fields.get("name") {
        Some(Value::String(name)) if is_dns_subdomain(name) => {}
        Some(Value::String(name)) => errors.push(format!(
            "metadata.name {name:?} is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.', at most 253)"
        )),
        Some(other) => errors.push(format!("metadata.name is {}, not a string", kind_of(other))),
        None => errors.push("metadata.name is missing (kubectl apply needs it)".to_string()),
    }
    if let Some(namespace) = fields.get("namespace")
        && !namespace.as_str().is_some_and(is_dns_label)
    {
        errors.push(format!(
            "metadata.namespace {namespace} is not a DNS-1123 label"
        ));
    }
    for map in ["labels", "annotations"] {
        let Some(entries) = fields.get(map) else {
            continue;
        };
        let Some(entries) = entries.as_object() else {
            errors.push(format!("metadata.{map} is not an object"));
            continue;
        };
        for (key, value) in entries {
            if !is_qualified_name(key) {
                errors.push(format!(
                    "metadata.{map}: key {key:?} is not a qualified name"
                ));
            }
            match value.as_str() {
                None => errors.push(format!("metadata.{map}.{key} is not a string")),
                Some(value) if map == "labels" && !is_label_value(value) => {
                    errors.push(format!(
                        "metadata.labels.{key}: {value:?} is not a label value"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    errors
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// DNS-1123 labels joined by `.`, at most 253.
pub fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

fn is_label_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

fn is_qualified_name(text: &str) -> bool {
    let (prefix, name) = match text.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// The CRDs, or `None` after a SKIPPED line naming `test`.
pub fn crds_or_skip(test: &str) -> Option<Crds> {
    match Crds::load() {
        Ok(crds) => Some(crds),
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_HCLOUD: &str = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: HCloudMachineTemplate
metadata:
  name: node-x86
spec:
  template:
    spec:
      imageName: node
      type: cx23
";

    const GOOD_BARE_METAL: &str = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: HetznerBareMetalMachineTemplate
metadata:
  name: node-amd64
spec:
  template:
    spec:
      installImage:
        image:
          name: Debian-1200-bookworm-amd64-k8s
          url: https://example.com/Debian-1200-bookworm-amd64-k8s.tar.gz
        swraid: 1
        swraidLevel: 1
        partitions:
          - mount: /
            fileSystem: ext4
            size: all
      sshSpec:
        portAfterInstallImage: 22
        secretRef:
          name: robot-ssh
          key:
            name: sshkey-name
            publicKey: ssh-publickey
            privateKey: ssh-privatekey
";

    /// The check refuses each mistake `kubectl apply --validate=strict` would refuse, and
    /// passes the documents without them: without this, a passing template would prove nothing.
    #[test]
    fn the_check_refuses_what_strict_apply_refuses() {
        let Some(crds) = crds_or_skip("the_check_refuses_what_strict_apply_refuses") else {
            return;
        };
        assert_eq!(crds.check(GOOD_HCLOUD), Vec::<String>::new());
        assert_eq!(crds.check(GOOD_BARE_METAL), Vec::<String>::new());
        assert_eq!(
            crds.check(&GOOD_BARE_METAL.replace("v1beta1", "v1beta2")),
            Vec::<String>::new(),
            "the other served version"
        );
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                GOOD_HCLOUD,
                "      type: cx23\n",
                "      type: cx23\n      tpye: cx23\n",
                "spec.template.spec.tpye: unknown field",
            ),
            (
                GOOD_HCLOUD,
                "      type: cx23\n",
                "",
                "the required field type is missing",
            ),
            (
                GOOD_HCLOUD,
                "imageName: node",
                "imageName: 1234",
                "spec.template.spec.imageName: a number where string goes",
            ),
            (
                GOOD_HCLOUD,
                "imageName: node",
                "imageName: yes",
                "a boolean where string goes",
            ),
            (
                GOOD_HCLOUD,
                "imageName: node",
                "imageName: \"\"",
                "is shorter than 1",
            ),
            (
                GOOD_HCLOUD,
                "imageName: node",
                "imageName: node\n      imageName: other",
                "duplicate field \"imageName\"",
            ),
            (
                GOOD_HCLOUD,
                "name: node-x86",
                "name: Node_x86",
                "is not a DNS-1123 subdomain",
            ),
            (
                GOOD_HCLOUD,
                "  name: node-x86\n",
                "  name: node-x86\n  nmae: x\n",
                "metadata.nmae: unknown field",
            ),
            (GOOD_HCLOUD, "v1beta1", "v1alpha1", "not served as v1alpha1"),
            (
                GOOD_HCLOUD,
                "kind: HCloudMachineTemplate",
                "kind: HCloudMachine",
                "no CRD for kind HCloudMachine",
            ),
            (
                GOOD_HCLOUD,
                "spec:\n  template:\n",
                "spec:\n  template:\n    metadata: {}\n",
                "v1beta2: spec.template.metadata: 0 fields, fewer than 1",
            ),
            (
                GOOD_HCLOUD,
                "      type: cx23\n",
                "      type: cx23\n      sshKeys:\n        - name: a\n        - name: a\n",
                "v1beta2: spec.template.spec.sshKeys[1]: the same [\"name\"] as an earlier item",
            ),
            (
                GOOD_HCLOUD,
                "      type: cx23\n",
                "      type: cx23\n  status:\n    x: 1\n",
                "spec.status: unknown field",
            ),
            (
                GOOD_BARE_METAL,
                "swraid: 1",
                "swraid: 2",
                "2 is not one of [0,1]",
            ),
            (
                GOOD_BARE_METAL,
                "swraidLevel: 1",
                "swraidLevel: \"1\"",
                "a string where integer goes",
            ),
            (
                GOOD_BARE_METAL,
                "        partitions:\n          - mount: /\n            fileSystem: ext4\n            size: all\n",
                "",
                "the required field partitions is missing",
            ),
            (
                GOOD_BARE_METAL,
                "            fileSystem: ext4\n",
                "",
                "the required field fileSystem is missing",
            ),
            (
                GOOD_BARE_METAL,
                "          url:",
                "          uri:",
                "spec.template.spec.installImage.image.uri: unknown field",
            ),
            (
                GOOD_BARE_METAL,
                "portAfterInstallImage: 22",
                "portAfterInstallImage: 22.5",
                "a number where integer goes",
            ),
            (
                GOOD_BARE_METAL,
                "          name: robot-ssh\n",
                "",
                "the required field name is missing",
            ),
            (
                GOOD_BARE_METAL,
                "secretRef:",
                "secretref:",
                "sshSpec.secretref: unknown field",
            ),
        ];
        for (good, from, to, expected) in cases {
            assert!(good.contains(from), "{from:?}");
            let bad = good.replacen(from, to, 1);
            let violations = crds.check(&bad);
            assert!(
                violations
                    .iter()
                    .any(|violation| violation.contains(expected)),
                "expected a violation containing {expected:?} for\n{bad}\ngot {violations:#?}"
            );
        }
    }

    #[test]
    fn status_fields_are_checked_with_patterns_and_formats() {
        let Some(crds) = crds_or_skip("status_fields_are_checked_with_patterns_and_formats") else {
            return;
        };
        let with_status = |reason: &str, time: &str| {
            format!(
                "{GOOD_HCLOUD}status:\n  conditions:\n    - type: Ready\n      status: \"True\"\n      lastTransitionTime: \"{time}\"\n      reason: {reason}\n      message: m\n  capacity:\n    memory: 4Gi\n"
            )
        };
        assert_eq!(
            crds.check(&with_status("Fine", "2026-01-02T03:04:05Z")),
            Vec::<String>::new()
        );
        let violations = crds.check(&with_status("Fine", "yesterday"));
        assert!(
            violations.iter().any(|v| v.contains("is not a date-time")),
            "{violations:#?}"
        );
        let mut status_v1beta2 = with_status("Fine", "2026-01-02T03:04:05Z");
        status_v1beta2.push_str("  v1beta2:\n    conditions:\n      - type: Ready\n        status: \"True\"\n        lastTransitionTime: \"2026-01-02T03:04:05Z\"\n        reason: \"1bad\"\n        message: m\n");
        let violations = crds.check(&status_v1beta2);
        assert!(
            violations.iter().any(|v| v.starts_with(
                "document 1: v1beta1: status.v1beta2.conditions[0].reason: \"1bad\" does not match"
            )),
            "{violations:#?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("v1beta2: status.v1beta2: unknown field")),
            "{violations:#?}"
        );
        let quantity = with_status("Fine", "2026-01-02T03:04:05Z").replace("4Gi", "4 GB");
        let violations = crds.check(&quantity);
        assert!(
            violations
                .iter()
                .any(|v| v.contains("status.capacity.memory: \"4 GB\" does not match")),
            "{violations:#?}"
        );
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1_and_1_2_would() {
        let cases = [
            ("node", Value::String("node".into())),
            ("1024M", Value::String("1024M".into())),
            ("v1.34.2", Value::String("v1.34.2".into())),
            ("1.34.2", Value::String("1.34.2".into())),
            ("1.34", serde_json::json!(1.34)),
            ("012", serde_json::json!(10)),
            ("0x1A", serde_json::json!(26)),
            ("1_000", serde_json::json!(1000)),
            ("1:20", serde_json::json!(80)),
            ("1e3", serde_json::json!(1000.0)),
            ("on", Value::Bool(true)),
            ("N", Value::Bool(false)),
            ("~", Value::Null),
        ];
        for (text, expected) in cases {
            assert_eq!(yaml::resolve_plain(text), Ok(expected), "{text}");
        }
        assert!(yaml::resolve_plain("2026-01-02").is_err());
        assert!(yaml::resolve_plain(".inf").is_err());
    }

    #[test]
    fn unimplemented_schema_keywords_are_violations() {
        let schema = serde_json::json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.a == 1"}],
        });
        let mut errors = Vec::new();
        validate(&serde_json::json!({}), &schema, "", &mut errors);
        assert_eq!(
            errors,
            ["(root): schema keyword x-kubernetes-validations is not implemented by this check"]
        );
    }
}
