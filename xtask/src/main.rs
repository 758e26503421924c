//! `cargo xtask`: release builds, benchmarks and other project automation.

fn main() {}
