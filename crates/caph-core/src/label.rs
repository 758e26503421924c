//! Hetzner Cloud label rules: what a label key and a label value may be.
//!
//! Values: empty, or at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
//! Keys: an optional DNS-like prefix and `/`, then a name with the value rules (but not empty).
//! The `hetzner.cloud/` prefix is reserved by the provider.

/// The longest label value, and the longest name part of a key.
pub const MAX_LABEL_LENGTH: usize = 63;

/// The longest prefix part of a key (before the `/`): the API's key regex allows 1 + 253 + 1 characters.
pub const MAX_PREFIX_LENGTH: usize = 255;

/// The prefix Hetzner reserves for its own labels: they can be selected on, not set.
pub const RESERVED_PREFIX: &str = "hetzner.cloud";

/// Checks a label value; the error says what is wrong, to follow the quoted value in a message.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name_like(value, MAX_LABEL_LENGTH)
}

/// Checks a label key that is about to be set: the key syntax, and not the reserved prefix.
pub fn check_key(key: &str) -> Result<(), String> {
    if key
        .split_once('/')
        .is_some_and(|(prefix, _)| is_reserved_prefix(prefix))
    {
        return Err("the prefix hetzner.cloud/ is reserved by Hetzner".to_string());
    }
    check_key_syntax(key)
}

/// Whether a key prefix is Hetzner's own.
pub fn is_reserved_prefix(prefix: &str) -> bool {
    prefix == RESERVED_PREFIX || prefix.ends_with(".hetzner.cloud")
}

/// Checks the syntax of a label key (reserved keys pass: they may be selected on).
pub fn check_key_syntax(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("the prefix before '/' is empty".to_string());
        }
        check_name_like(prefix, MAX_PREFIX_LENGTH).map_err(|why| format!("prefix: {why}"))?;
    }
    if name.is_empty() {
        return Err("the name is empty".to_string());
    }
    check_name_like(name, MAX_LABEL_LENGTH)
}

fn check_name_like(text: &str, max_length: usize) -> Result<(), String> {
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("'{}' is not allowed", bad.escape_default()));
    }
    if text.len() > max_length {
        return Err(format!(
            "it is {} characters long, the limit is {max_length}",
            text.len()
        ));
    }
    let first = text.chars().next();
    let last = text.chars().last();
    if !first.is_some_and(|c| c.is_ascii_alphanumeric())
        || !last.is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("it must start and end with a letter or digit".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(check_value(""), Ok(()));
        assert_eq!(check_value("v1.31.2"), Ok(()));
        assert_eq!(
            check_value("v1.31.2+k3s"),
            Err("'+' is not allowed".to_string())
        );
        assert_eq!(
            check_value("-a"),
            Err("it must start and end with a letter or digit".to_string())
        );
        assert!(check_value(&"a".repeat(63)).is_ok());
        assert!(check_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(check_key("caph-image-name"), Ok(()));
        assert_eq!(check_key("example.com/team"), Ok(()));
        assert!(check_key("hetzner.cloud/x").is_err());
        assert!(check_key_syntax("hetzner.cloud/x").is_ok());
        assert!(check_key(&format!("{}/a", "p".repeat(255))).is_ok());
        assert!(check_key(&format!("{}/a", "p".repeat(256))).is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a b").is_err());
    }
}
