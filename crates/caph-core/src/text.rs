//! What user and API text may hold where it ends up: in one line of a line-oriented file (the
//! autosetup file, `sysctl.d`, an apt sources line, a `.sha256` file), or on a terminal.
//!
//! Two rules cover every line-oriented file the tool writes:
//! - [`check_line`]: the value is (part of) one line: no line break and no other control
//!   character, since a line break would add a line of its own (a second `IMAGE` line, which
//!   installimage obeys), and a control character is not text any reader expects;
//! - [`check_field`]: the value is one whitespace-separated field of a line (installimage reads
//!   `awk '{print $2}'`, apt reads a URL up to the next blank): [`check_line`], and no blank
//!   and no `#`, which starts a comment.
//!
//! The spec loader refuses such values with a diagnostic, and every renderer of a line-oriented
//! file checks them again before it writes (defence in depth).
//!
//! [`Escaped`] is the other half: text from users or an API shown with its control characters
//! escaped, so that it cannot move the cursor, recolour the terminal or start a line of its own.

use std::fmt;

/// Why a value cannot be part of a line, or one field of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineProblem {
    /// A line feed, carriage return, vertical tab, form feed, U+0085, U+2028 or U+2029.
    LineBreak(char),
    /// Another control character (NUL, escape, ...), or a bidirectional override.
    Control(char),
    /// A blank inside a value that must be one field.
    Blank(char),
    /// A `#` inside a value that must be one field: readers take it for a comment.
    Comment,
    /// An empty value where a field must be: the fields after it would shift.
    Empty,
}

impl LineProblem {
    /// What is wrong, for a message that goes on with "...": `holds a line break (\n)`.
    pub fn describe(self) -> String {
        match self {
            LineProblem::LineBreak(c) => {
                format!("holds a line break ({})", Escaped(&c.to_string()))
            }
            LineProblem::Control(c) => format!(
                "holds the control character U+{:04X} ({})",
                u32::from(c),
                Escaped(&c.to_string())
            ),
            LineProblem::Blank(' ') => "holds a space".to_string(),
            LineProblem::Blank(c) => format!("holds a blank ({})", Escaped(&c.to_string())),
            LineProblem::Comment => "holds a #, which starts a comment".to_string(),
            LineProblem::Empty => "is empty".to_string(),
        }
    }
}

/// Characters that end a line for some reader: `\n`, `\r`, VT, FF, NEL, LINE SEPARATOR and
/// PARAGRAPH SEPARATOR.
pub fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Characters a terminal or a line-oriented reader does not show as themselves: C0 and C1
/// controls, DEL, and the bidirectional embeddings, overrides and isolates that reorder what
/// is shown ("Trojan Source").
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `value` may be (part of) one line of a line-oriented file.
pub fn check_line(value: &str) -> Result<(), LineProblem> {
    for c in value.chars() {
        if is_line_break(c) {
            return Err(LineProblem::LineBreak(c));
        }
        if is_control(c) && c != '\t' {
            return Err(LineProblem::Control(c));
        }
    }
    Ok(())
}

/// `value` may be one whitespace-separated field of a line: [`check_line`], not empty, no
/// blank, no `#`.
pub fn check_field(value: &str) -> Result<(), LineProblem> {
    if value.is_empty() {
        return Err(LineProblem::Empty);
    }
    check_line(value)?;
    if let Some(blank) = value.chars().find(|c| c.is_whitespace()) {
        return Err(LineProblem::Blank(blank));
    }
    if value.contains('#') {
        return Err(LineProblem::Comment);
    }
    Ok(())
}

/// A value a renderer of a line-oriented file refused: validation lets no such value through,
/// so this is the second line of defence, for values that did not come through a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeLine {
    /// The file that was to be written.
    pub file: String,
    /// The value.
    pub value: String,
    /// What is wrong with it.
    pub problem: LineProblem,
}

impl fmt::Display for UnsafeLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to write {}: \"{}\" {}",
            Escaped(&self.file),
            Escaped(&self.value),
            self.problem.describe()
        )
    }
}

impl std::error::Error for UnsafeLine {}

/// [`check_line`] for a value about to be written into `file`.
pub fn line_in(file: &str, value: &str) -> Result<(), UnsafeLine> {
    check_line(value).map_err(|problem| unsafe_line(file, value, problem))
}

/// [`check_field`] for a value about to be written into `file`.
pub fn field_in(file: &str, value: &str) -> Result<(), UnsafeLine> {
    check_field(value).map_err(|problem| unsafe_line(file, value, problem))
}

fn unsafe_line(file: &str, value: &str, problem: LineProblem) -> UnsafeLine {
    UnsafeLine {
        file: file.to_string(),
        value: value.to_string(),
        problem,
    }
}

/// Text with its control characters escaped, for a terminal or one line of a log:
/// `\n`, `\r` and `\t` as such, the rest as `\u{1b}`. Nothing else changes.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(position) = rest.find(is_control) {
            f.write_str(&rest[..position])?;
            let c = rest[position..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                other => write!(f, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[position + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// [`Escaped`] as a `String`; borrows when there is nothing to escape.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(is_control) {
        std::borrow::Cow::Owned(Escaped(text).to_string())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `path` with empty and `.` components removed (`/etc//x/./y/` gives `/etc/x/y`): two spellings
/// of one path compare equal only in this form. `..` is kept; callers that must stay below a
/// directory refuse it.
pub fn normal_path(path: &str) -> String {
    let components: Vec<&str> = path
        .split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect();
    let joined = components.join("/");
    if path.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_fields() {
        assert_eq!(check_line("vm.max_map_count = 1"), Ok(()));
        assert_eq!(check_line("a\tb"), Ok(()));
        assert_eq!(check_line("a\nb"), Err(LineProblem::LineBreak('\n')));
        assert_eq!(
            check_line("a\u{2028}b"),
            Err(LineProblem::LineBreak('\u{2028}'))
        );
        assert_eq!(
            check_line("a\u{1b}[2J"),
            Err(LineProblem::Control('\u{1b}'))
        );
        assert_eq!(
            check_line("abc\u{202e}"),
            Err(LineProblem::Control('\u{202e}'))
        );
        assert_eq!(check_field("/dev/sda"), Ok(()));
        assert_eq!(check_field("/dev/sda IMAGE"), Err(LineProblem::Blank(' ')));
        assert_eq!(check_field("/dev/sda#x"), Err(LineProblem::Comment));
        assert_eq!(check_field("a\tb"), Err(LineProblem::Blank('\t')));
        assert_eq!(check_field(""), Err(LineProblem::Empty));
    }

    #[test]
    fn normal_paths() {
        assert_eq!(normal_path("/etc//motd"), "/etc/motd");
        assert_eq!(normal_path("/dev/./sda/"), "/dev/sda");
        assert_eq!(normal_path("/dev/sda"), "/dev/sda");
        assert_eq!(normal_path("a/./b//c"), "a/b/c");
        assert_eq!(normal_path("/x/../y"), "/x/../y");
    }

    #[test]
    fn escaping() {
        assert_eq!(Escaped("plain é").to_string(), "plain é");
        assert_eq!(
            Escaped("a\nb\r\t\u{1b}[31m\u{0}\u{202e}z").to_string(),
            "a\\nb\\r\\t\\u{1b}[31m\\u{0}\\u{202e}z"
        );
        assert!(matches!(escape("ok"), std::borrow::Cow::Borrowed("ok")));
        assert_eq!(
            LineProblem::Control('\u{1b}').describe(),
            "holds the control character U+001B (\\u{1b})"
        );
    }
}
