//! A sha256 digest as `sha256sum` prints it: 64 lowercase hex digits. Read from checksum files,
//! flags and hashers' output, and known before an upload (`caph_ssh::Session::upload_expecting`).

use std::fmt;

/// A well-formed sha256 digest: 64 hex digits, kept in lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Reads 64 hex digits (either case); anything else, surrounding spaces included, is `None`.
    pub fn parse(text: &str) -> Option<Sha256Hex> {
        let well_formed = text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit());
        well_formed.then(|| Sha256Hex(text.to_ascii_lowercase()))
    }

    /// The digest as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_hex_digits_are_a_digest_and_they_are_kept_in_lowercase() {
        let upper = "AB".repeat(32);
        assert_eq!(
            Sha256Hex::parse(&upper).map(|digest| digest.to_string()),
            Some("ab".repeat(32))
        );
        assert!(Sha256Hex::parse(&"a".repeat(63)).is_none());
        assert!(Sha256Hex::parse(&"a".repeat(65)).is_none());
        assert!(Sha256Hex::parse(&format!("{} ", "a".repeat(63))).is_none());
        assert!(Sha256Hex::parse(&"g".repeat(64)).is_none());
        assert!(Sha256Hex::parse("").is_none());
    }
}
