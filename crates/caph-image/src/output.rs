//! Where results and errors are printed: results on stdout, messages on stderr.
//!
//! Two rules hold for everything printed here:
//! - **Control characters are escaped** ([`caph_core::text::Escaped`]): text from a spec, a file
//!   name or an API answer cannot move the cursor, retitle the terminal or recolour what
//!   follows. Line breaks that structure a result stay; in a message, a line break continues
//!   the message on an indented line, so no line can pass for a message of its own.
//! - **A closed stream is not an error**: `caph-image plan ... | head` closes standard output
//!   early; what cannot be written is dropped, and the command ends with its own exit code.

use std::io::{IsTerminal, Write};

use caph_core::text::Escaped;

/// `text` with every control character escaped but line breaks and tabs.
fn escaped_lines(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for (index, line) in text.split('\n').enumerate() {
        if index > 0 {
            escaped.push('\n');
        }
        for (position, part) in line.split('\t').enumerate() {
            if position > 0 {
                escaped.push('\t');
            }
            escaped.push_str(&Escaped(part).to_string());
        }
    }
    escaped
}

/// A message: escaped, its continuation lines indented.
fn message(text: &str) -> String {
    escaped_lines(text.trim_end_matches('\n')).replace('\n', "\n  ")
}

/// Writes `text` and a line break, ignoring a closed stream.
fn write_line(mut stream: impl Write, text: &str) {
    let _ = stream
        .write_all(text.as_bytes())
        .and_then(|()| stream.write_all(b"\n"))
        .and_then(|()| stream.flush());
}

/// Prints a result on standard output; its lines stay lines, control characters are escaped.
pub fn result(text: &str) {
    write_line(std::io::stdout().lock(), &escaped_lines(text));
}

/// Prints a script (a plan) on standard output: as it is into a file or a pipe, since those
/// bytes are what a build runs; escaped like [`result`] on a terminal.
pub fn script(text: &str) {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        result(text);
    } else {
        write_line(stdout.lock(), text);
    }
}

/// Prints bytes on standard output as they are (completions, a man page: generated here).
pub fn raw(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
}

/// Prints a JSON document on standard output (JSON escapes control characters itself).
pub fn json(value: &serde_json::Value) {
    // Serializing a Value cannot fail; fall back to compact form just in case.
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    write_line(std::io::stdout().lock(), &text);
}

/// Prints an error on standard error.
pub fn error(text: &str) {
    write_line(
        std::io::stderr().lock(),
        &format!("error: {}", message(text)),
    );
}

/// Prints a diagnostic or note on standard error.
pub fn note(text: &str) {
    write_line(std::io::stderr().lock(), &message(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_escape_and_indent() {
        assert_eq!(
            message("bad \u{1b}[2Jname\nerror: fake\n"),
            "bad \\u{1b}[2Jname\n  error: fake"
        );
        assert_eq!(escaped_lines("a\tb\r\nc"), "a\tb\\r\nc");
    }
}
