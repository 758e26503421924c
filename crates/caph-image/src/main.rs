//! The `caph-image` command-line tool.

fn main() {}
