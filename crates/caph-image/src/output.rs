//! Where results and errors are printed: results on stdout, messages on stderr.

#![allow(clippy::print_stdout, clippy::print_stderr)]

/// Prints a result line on standard output.
pub fn result(text: &str) {
    println!("{text}");
}

/// Prints a JSON document on standard output.
pub fn json(value: &serde_json::Value) {
    // Serializing a Value cannot fail; fall back to compact form just in case.
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    println!("{text}");
}

/// Prints an error on standard error.
pub fn error(text: &str) {
    eprintln!("error: {text}");
}

/// Prints a diagnostic or note on standard error.
pub fn note(text: &str) {
    eprintln!("{text}");
}
