//! Label rules and a label-selector builder that refuses what it cannot express.
//!
//! The selector grammar of the API has no quoting: a value holding `,`, `(`, `)`, `=`, `!` or a
//! space would change the meaning of the selector. Valid label values can hold none of those, so
//! the builder checks every key and value against the label rules and returns an error for
//! anything else, instead of escaping or dropping it silently.
//!
//! Rules (from the API's own regular expressions):
//! - value: empty, or 1 to 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends;
//! - key: an optional prefix of 1 to 255 characters of `[A-Za-z0-9._-]` (alphanumeric at both
//!   ends) and a `/`, then a name of 1 to 63 characters with the value rules;
//! - keys under the `hetzner.cloud/` prefix are reserved: they can be selected on but not set.

use std::fmt;

use super::types::Labels;

pub use caph_core::label::{
    MAX_LABEL_LENGTH as MAX_LABEL_VALUE_LENGTH, MAX_PREFIX_LENGTH as MAX_LABEL_PREFIX_LENGTH,
    RESERVED_PREFIX as RESERVED_LABEL_PREFIX,
};

/// A label key or value that breaks the label rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A key breaks the key rules.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value breaks the value rules.
    #[error("invalid value {value:?} for label {key:?}: {reason}")]
    InvalidValue {
        /// The key the value belongs to.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key uses the reserved `hetzner.cloud/` prefix.
    #[error("label key {key:?} uses the prefix hetzner.cloud/, which Hetzner reserves")]
    ReservedKey {
        /// The key as given.
        key: String,
    },
    /// An `in`/`notin` term was given no values.
    #[error("selector term on {key:?} has an empty value list, which matches nothing")]
    EmptyValueList {
        /// The key of the term.
        key: String,
    },
}

/// Checks a label key against the key rules (the reserved prefix is allowed: see
/// [`check_labels`] for labels that are set). The rules live in `caph_core::label`.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    caph_core::label::check_key_syntax(key).map_err(|reason| LabelError::InvalidKey {
        key: key.to_string(),
        reason,
    })
}

/// Checks a label value for `key` against the value rules.
pub fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    caph_core::label::check_value(value).map_err(|reason| LabelError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    })
}

/// Checks labels that are about to be set: every key and value, and no reserved prefix.
pub fn check_labels(labels: &Labels) -> Result<(), LabelError> {
    for (key, value) in labels {
        check_key(key)?;
        if key
            .split_once('/')
            .is_some_and(|(prefix, _)| caph_core::label::is_reserved_prefix(prefix))
        {
            return Err(LabelError::ReservedKey { key: key.clone() });
        }
        check_value(key, value)?;
    }
    Ok(())
}

/// A label selector: terms joined by `,` (AND), each key and value checked.
///
/// ```
/// use caph_hcloud::client::LabelSelector;
/// let selector = LabelSelector::new()
///     .eq("caph-image-name", "ubuntu-24.04-kubeadm-1.33.1")?
///     .exists("caph-image-build")?
///     .not_in("env", ["dev", "test"])?;
/// assert_eq!(
///     selector.to_string(),
///     "caph-image-name==ubuntu-24.04-kubeadm-1.33.1,caph-image-build,env notin (dev,test)"
/// );
/// # Ok::<(), caph_hcloud::client::LabelError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<String>,
}

impl LabelSelector {
    /// An empty selector (matches everything; sent as no `label_selector` at all).
    pub fn new() -> Self {
        LabelSelector::default()
    }

    /// `key==value`: the label is present with this value.
    pub fn eq(self, key: &str, value: &str) -> Result<Self, LabelError> {
        check_key(key)?;
        check_value(key, value)?;
        Ok(self.push(format!("{key}=={value}")))
    }

    /// `key!=value`: the label is absent or has another value.
    pub fn ne(self, key: &str, value: &str) -> Result<Self, LabelError> {
        check_key(key)?;
        check_value(key, value)?;
        Ok(self.push(format!("{key}!={value}")))
    }

    /// `key`: the label is present, with any value.
    pub fn exists(self, key: &str) -> Result<Self, LabelError> {
        check_key(key)?;
        Ok(self.push(key.to_string()))
    }

    /// `!key`: the label is absent.
    pub fn not_exists(self, key: &str) -> Result<Self, LabelError> {
        check_key(key)?;
        Ok(self.push(format!("!{key}")))
    }

    /// `key in (a,b)`: the label has one of these values. An empty list is an error.
    pub fn is_in<I, V>(self, key: &str, values: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = V>,
        V: AsRef<str>,
    {
        let list = value_list(key, values)?;
        Ok(self.push(format!("{key} in ({list})")))
    }

    /// `key notin (a,b)`: the label is absent or has none of these values. An empty list is an
    /// error.
    pub fn not_in<I, V>(self, key: &str, values: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = V>,
        V: AsRef<str>,
    {
        let list = value_list(key, values)?;
        Ok(self.push(format!("{key} notin ({list})")))
    }

    /// Whether no term was added.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn push(mut self, term: String) -> Self {
        self.terms.push(term);
        self
    }
}

fn value_list<I, V>(key: &str, values: I) -> Result<String, LabelError>
where
    I: IntoIterator<Item = V>,
    V: AsRef<str>,
{
    check_key(key)?;
    let mut checked = Vec::new();
    for value in values {
        let value = value.as_ref();
        check_value(key, value)?;
        checked.push(value.to_string());
    }
    if checked.is_empty() {
        return Err(LabelError::EmptyValueList {
            key: key.to_string(),
        });
    }
    Ok(checked.join(","))
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_operator_joined_by_comma() {
        let selector = LabelSelector::new()
            .eq("a", "1")
            .and_then(|s| s.ne("b", "2"))
            .and_then(|s| s.exists("example.com/c"))
            .and_then(|s| s.not_exists("d"))
            .and_then(|s| s.is_in("e", ["x", "y"]))
            .and_then(|s| s.not_in("f", vec!["z".to_string()]))
            .unwrap();
        assert_eq!(
            selector.to_string(),
            "a==1,b!=2,example.com/c,!d,e in (x,y),f notin (z)"
        );
        assert!(LabelSelector::new().is_empty());
        assert_eq!(LabelSelector::new().to_string(), "");
    }

    #[test]
    fn rejects_values_that_would_change_the_selector() {
        for bad in [
            "a,b", "a b", "a=b", "(a)", "a!", "-a", "a-", "ä", "a/b", "a+b",
        ] {
            let error = LabelSelector::new().eq("key", bad).unwrap_err();
            assert!(
                matches!(&error, LabelError::InvalidValue { value, .. } if value == bad),
                "{bad}: {error}"
            );
            assert!(
                LabelSelector::new().is_in("key", ["ok", bad]).is_err(),
                "{bad}"
            );
        }
        let too_long = "a".repeat(64);
        assert!(LabelSelector::new().eq("key", &too_long).is_err());
        assert!(LabelSelector::new().eq("key", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn rejects_bad_keys_and_empty_lists() {
        for bad in [
            "",
            "/a",
            "a/",
            "a b",
            "a,b",
            "!a",
            "a=b",
            "pre/fix/name",
            "-a",
        ] {
            assert!(
                matches!(
                    LabelSelector::new().exists(bad),
                    Err(LabelError::InvalidKey { .. })
                ),
                "{bad:?}"
            );
        }
        let long_prefix = format!("{}/name", "p".repeat(255));
        assert!(LabelSelector::new().exists(&long_prefix).is_ok());
        let too_long_prefix = format!("{}/name", "p".repeat(256));
        assert!(LabelSelector::new().exists(&too_long_prefix).is_err());
        assert!(matches!(
            LabelSelector::new().is_in("k", Vec::<String>::new()),
            Err(LabelError::EmptyValueList { .. })
        ));
        // Selecting on a reserved key is fine; setting one is not.
        assert!(LabelSelector::new().exists("hetzner.cloud/x").is_ok());
        let labels = Labels::from([("hetzner.cloud/x".to_string(), "1".to_string())]);
        assert!(matches!(
            check_labels(&labels),
            Err(LabelError::ReservedKey { .. })
        ));
    }

    #[test]
    fn accepts_empty_label_values_when_setting() {
        let labels = Labels::from([
            ("just-a-key".to_string(), String::new()),
            ("example.com/my".to_string(), "label".to_string()),
        ]);
        assert_eq!(check_labels(&labels), Ok(()));
    }
}
