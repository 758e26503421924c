//! The input checks the real service makes: label syntax, RFC 1123 names, SSH public keys.

use std::collections::BTreeMap;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use serde_json::Value;

use super::error::ApiError;

fn is_alnum(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

/// Alphanumeric at both ends, `-_.` or alphanumeric inside, at most `max` bytes, at least one.
fn segment_problem(segment: &str, max: usize) -> Option<&'static str> {
    let bytes = segment.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Some("must not be empty");
    };
    if bytes.len() > max {
        return Some("is too long");
    }
    if !is_alnum(*first) || !is_alnum(*last) {
        return Some("must begin and end with an alphanumeric character");
    }
    if bytes
        .iter()
        .any(|byte| !(is_alnum(*byte) || matches!(byte, b'-' | b'_' | b'.')))
    {
        return Some("may only contain alphanumerics, '-', '_' and '.'");
    }
    None
}

/// Why a label key is invalid, if it is: optional DNS prefix and `/`, then a name of ≤ 63 bytes.
pub(crate) fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && segment_problem(prefix, 255).is_some()
    {
        return Some("has an invalid prefix");
    }
    segment_problem(name, 63)
}

/// Why a label value is invalid, if it is: empty, or ≤ 63 bytes with alphanumeric ends.
pub(crate) fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    segment_problem(value, 63)
}

/// Reads and checks a `labels` object from a request body.
pub(crate) fn labels(value: Option<&Value>) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid_field(
            "labels",
            "must be an object of strings",
        ));
    };
    let mut labels = BTreeMap::new();
    for (key, value) in object {
        let Some(text) = value.as_str() else {
            return Err(ApiError::invalid_field(
                "labels",
                format!("value of label '{key}' must be a string"),
            ));
        };
        if let Some(problem) = label_key_problem(key) {
            return Err(ApiError::invalid_field(
                "labels",
                format!("label key '{key}' {problem}"),
            ));
        }
        if key.starts_with("hetzner.cloud/") {
            return Err(ApiError::invalid_field(
                "labels",
                format!("label key '{key}' uses the reserved prefix hetzner.cloud/"),
            ));
        }
        if let Some(problem) = label_value_problem(text) {
            return Err(ApiError::invalid_field(
                "labels",
                format!("label value '{text}' of key '{key}' {problem}"),
            ));
        }
        labels.insert(key.clone(), text.to_owned());
    }
    Ok(Some(labels))
}

/// Why `name` is not an RFC 1123 hostname, if it is not.
pub(crate) fn hostname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.len() > 253 {
        return Some("must be at most 253 characters");
    }
    for part in name.split('.') {
        let bytes = part.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Some("must not contain empty labels");
        };
        if bytes.len() > 63 {
            return Some("labels must be at most 63 characters");
        }
        if *first == b'-' || *last == b'-' {
            return Some("labels must not begin or end with '-'");
        }
        if bytes
            .iter()
            .any(|byte| !(byte.is_ascii_alphanumeric() || *byte == b'-'))
        {
            return Some("may only contain letters, digits, '-' and '.'");
        }
    }
    None
}

/// The MD5 fingerprint (colon-separated hex) of an OpenSSH public key line, if it parses.
pub(crate) fn ssh_fingerprint(public_key: &str) -> Option<String> {
    let mut fields = public_key.split_whitespace();
    let kind = fields.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(fields.next()?)
        .ok()?;
    // The blob starts with the key type as an SSH string; it must match the first field.
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let embedded = blob.get(4..4 + length)?;
    if embedded != kind.as_bytes() {
        return None;
    }
    let digest = Md5::digest(&blob);
    Some(
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        assert_eq!(label_key_problem("caph-image-name"), None);
        assert_eq!(label_key_problem("example.com/my"), None);
        assert_eq!(label_key_problem("a"), None);
        assert!(label_key_problem("-a").is_some());
        assert!(label_key_problem("a/b/c").is_some());
        assert!(label_key_problem(&"k".repeat(64)).is_some());
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("v1.30.2"), None);
        assert!(label_value_problem("1.30+k3s").is_some());
        assert!(label_value_problem("a b").is_some());
        assert!(label_value_problem("a/b").is_some());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_problem("caph-build-1"), None);
        assert_eq!(hostname_problem("node.example.com"), None);
        assert!(hostname_problem("under_score").is_some());
        assert!(hostname_problem("-lead").is_some());
        assert!(hostname_problem("a..b").is_some());
    }

    #[test]
    fn fingerprint_of_an_ed25519_key() {
        // A key whose blob is the type string plus 32 zero bytes.
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[0u8; 32]);
        let line = format!(
            "ssh-ed25519 {} test",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        let expected = Md5::digest(&blob)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(ssh_fingerprint(&line), Some(expected));
        assert_eq!(ssh_fingerprint("ssh-rsa AAAA"), None);
        assert_eq!(ssh_fingerprint("ssh-rsa"), None);
    }
}
