//! Shell text built from typed data: one quoting function, and a script builder that starts every
//! script with `set -euo pipefail`.

use std::fmt::Write as _;

/// Quotes `text` as one bash word. Text made only of safe characters is left as it is, so plans stay readable.
pub fn quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@' | '%')
        });
    if safe {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Builds one step's script.
#[derive(Debug)]
pub(crate) struct Script {
    text: String,
}

impl Script {
    pub(crate) fn new() -> Script {
        Script {
            text: "set -euo pipefail\n".to_string(),
        }
    }

    /// Appends literal shell lines (no interpolation: callers quote what they insert).
    pub(crate) fn line(&mut self, line: impl AsRef<str>) -> &mut Script {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
        self
    }

    /// Appends a command made of words, each quoted.
    pub(crate) fn command(&mut self, words: &[&str]) -> &mut Script {
        let quoted: Vec<String> = words.iter().map(|word| quote(word)).collect();
        self.line(quoted.join(" "))
    }

    /// Appends `name=value` with the value quoted.
    pub(crate) fn assign(&mut self, name: &str, value: &str) -> &mut Script {
        let _ = writeln!(self.text, "{name}={}", quote(value));
        self
    }

    pub(crate) fn finish(&self) -> String {
        self.text.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote("kubelet"), "kubelet");
        assert_eq!(
            quote("https://dl.k8s.io/release"),
            "https://dl.k8s.io/release"
        );
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("a\nb"), "'a\nb'");
    }
}
