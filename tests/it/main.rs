//! End-to-end tests that run the real `caph-image` binary.

mod cli;
mod cloud;
mod hcloud_build;
mod hcloud_faults;
mod hcloud_sim_mode;
mod robot;
mod tarball;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `caph-image` with `args` in `dir` and returns what it did.
pub fn caph_image(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("caph-image runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
