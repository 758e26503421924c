//! Root-relative exclusion patterns: `*` and `?` within one path component, nothing more.
//!
//! A pattern such as `var/cache/apt/archives/*.deb` names paths relative to the packed tree's
//! root, component by component. A matching directory is dropped with everything below it.
//! Deliberately small: no `**`, no character classes, no negation, so a pattern means what it
//! looks like.

/// A parsed pattern: one matcher per path component.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    components: Vec<Vec<u8>>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternError {
    Empty,
    Absolute,
    DotComponent,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PatternError::Empty => "a pattern needs at least one path component",
            PatternError::Absolute => {
                "patterns are relative to the packed tree's root: drop the leading `/`"
            }
            PatternError::DotComponent => "`.` and `..` components are not allowed",
        })
    }
}

impl Pattern {
    /// Parses `pattern`; a leading `./` is accepted and ignored.
    pub(crate) fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let relative = pattern.strip_prefix("./").unwrap_or(pattern);
        if relative.starts_with('/') {
            return Err(PatternError::Absolute);
        }
        let components: Vec<Vec<u8>> = relative
            .split('/')
            .filter(|component| !component.is_empty())
            .map(|component| component.as_bytes().to_vec())
            .collect();
        if components.is_empty() {
            return Err(PatternError::Empty);
        }
        if components.iter().any(|c| c == b"." || c == b"..") {
            return Err(PatternError::DotComponent);
        }
        Ok(Pattern { components })
    }

    /// Whether the root-relative path (components joined by `/`) matches.
    pub(crate) fn matches(&self, relative: &[u8]) -> bool {
        let components = || relative.split(|&byte| byte == b'/');
        components().count() == self.components.len()
            && components()
                .zip(&self.components)
                .all(|(name, pattern)| glob(pattern, name))
    }
}

/// Matches one component against a pattern with `*` (any run) and `?` (any one byte).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matching with one backtrack point: linear enough for file names.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(path.as_bytes())
    }

    #[test]
    fn globs_match_within_one_component() {
        assert!(matches(
            "var/cache/apt/archives/*.deb",
            "var/cache/apt/archives/a_1.0.deb"
        ));
        assert!(!matches(
            "var/cache/apt/archives/*.deb",
            "var/cache/apt/archives/partial"
        ));
        assert!(!matches("tmp/*", "tmp"));
        assert!(matches("tmp/*", "tmp/x"));
        assert!(
            !matches("tmp/*", "tmp/x/y"),
            "subtrees go with their matching parent"
        );
        assert!(matches("./a?c", "abc"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(
            Pattern::parse("/tmp/*").unwrap_err(),
            PatternError::Absolute
        );
        assert_eq!(Pattern::parse("").unwrap_err(), PatternError::Empty);
        assert_eq!(
            Pattern::parse("a/../b").unwrap_err(),
            PatternError::DotComponent
        );
    }
}
