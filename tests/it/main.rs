//! End-to-end tests that run the real `caph-image` binary.

mod boot;
mod caph_replay;
mod cli;
mod cloud;
mod crd;
mod from_tarball;
mod hcloud_build;
mod hcloud_capacity;
mod hcloud_faults;
mod hcloud_sim_mode;
mod hostile;
mod installed_disk;
mod installimage_differential;
mod machine_templates;
mod rescue_install;
mod robot;
mod robot_sim_mode;
mod runtime;
mod tarball;
mod tarball_spec;
mod upload;
mod verify;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real installimage of `kind` from `../shared/vendor/installimage/` (checked by sha256),
/// or why it cannot be had: the folder is missing outside CI (where `.ci/run` insists on it).
pub fn vendored_installimage(
    kind: caph_sim::real_installimage::InstallimageKind,
) -> Result<caph_sim::real_installimage::InstallimageArchive, String> {
    let vendor = repo().join("../shared/vendor/installimage");
    if !vendor.is_dir() {
        return Err(format!(
            "{} is missing (the unmodified installimage archives; see shared/vendor/README.md)",
            vendor.display()
        ));
    }
    caph_sim::real_installimage::InstallimageArchive::vendored(&vendor, kind)
        .map_err(|error| error.to_string())
}

/// Runs `caph-image` with `args` in `dir` and returns what it did.
pub fn caph_image(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("caph-image runs")
}

/// Whether this process runs as root (the effective user id).
pub fn is_root() -> bool {
    // /proc/self/status: the Uid line lists real, effective, saved and fs ids.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
