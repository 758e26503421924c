//! Exact `MAJOR.MINOR.PATCH` versions, as every pinned component in a spec uses them.

use std::fmt;

/// A release version without a leading `v`, for example `1.36.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl Version {
    /// Parses `X.Y.Z`; the error explains what is wrong and is meant to follow the quoted input.
    pub fn parse(text: &str) -> Result<Version, String> {
        if text.starts_with('v') {
            return Err("must not start with 'v'".to_string());
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return Err("is not an exact version of the form MAJOR.MINOR.PATCH".to_string());
        }
        let number = |part: &str| -> Result<u32, String> {
            if part.is_empty()
                || !part.chars().all(|c| c.is_ascii_digit())
                || (part.len() > 1 && part.starts_with('0'))
            {
                return Err("is not an exact version of the form MAJOR.MINOR.PATCH".to_string());
            }
            part.parse()
                .map_err(|_| "has a component that is too large".to_string())
        };
        Ok(Version {
            major: number(parts[0])?,
            minor: number(parts[1])?,
            patch: number(parts[2])?,
        })
    }

    /// `MAJOR.MINOR`, as apt repository paths use it.
    pub fn minor_series(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_versions_only() {
        assert_eq!(
            Version::parse("1.36.0").map(|v| v.to_string()),
            Ok("1.36.0".to_string())
        );
        assert!(Version::parse("v1.36.0").is_err());
        assert!(Version::parse("1.36").is_err());
        assert!(Version::parse("1.36.x").is_err());
        assert!(Version::parse("01.2.3").is_err());
        assert!(Version::parse("1.2.3-rc.1").is_err());
    }
}
