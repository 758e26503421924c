//! The configuration the property tests share (issue 12); the caph-robot and caph-rootfs tests
//! include this file by path.

use proptest::test_runner::Config;

/// `default_cases` cases, or `PROPTEST_CASES` when set (as `cargo xtask fuzz` sets it). A
/// failure prints its smallest input; nothing is written into the source tree.
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
