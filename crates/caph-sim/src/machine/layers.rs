//! Machine disks as overlayfs: read-only lower layers shared by every machine made from the same system image or snapshot, and an upper layer of each machine's own.
//!
//! - A system image is one lower layer: its cached root filesystem.
//! - A machine is its image's layers below an upper directory that takes its writes; its root is
//!   the overlay mount, made in the host's mount namespace (so the host sees the merged tree, and
//!   every machine namespace started from it inherits the mount).
//! - A snapshot copies the machine's upper directory (whiteouts and opaque-directory attributes
//!   included) into a new layer on top of the machine's lower layers. No layer is ever written
//!   once something reads it, which overlayfs requires of lower layers.
//!
//! Creating a machine is a mount instead of copying a whole root filesystem, deleting one an
//! unmount and the removal of what it wrote, and a snapshot copies only what the server changed.
//! Servers never see each other's writes: each has its own upper directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::host::MachineError;

/// The directories of one machine's overlay, below its machine directory.
pub(crate) struct MachineLayers {
    /// Where the merged tree is mounted: the machine's root filesystem.
    pub root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl MachineLayers {
    pub fn in_dir(dir: &Path) -> MachineLayers {
        MachineLayers {
            root: dir.join("root"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    /// Creates the directories and mounts the overlay of `lowers` (topmost first).
    pub async fn mount(&self, lowers: &[PathBuf]) -> Result<(), MachineError> {
        if lowers.is_empty() {
            return Err(MachineError(
                "an overlay needs at least one lower layer".into(),
            ));
        }
        for dir in [&self.root, &self.upper, &self.work] {
            super::create_private_dir_all(dir)
                .map_err(|error| MachineError(format!("creating {}: {error}", dir.display())))?;
        }
        let lowerdir = lowers
            .iter()
            .map(|layer| escape_option(&layer.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(":");
        let options = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            escape_option(&self.upper.to_string_lossy()),
            escape_option(&self.work.to_string_lossy())
        );
        let output = tokio::process::Command::new("mount")
            .args(["-t", "overlay", "caph-sim-machine", "-o"])
            .arg(&options)
            .arg(&self.root)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| MachineError(format!("running mount: {error}")))?;
        if !output.status.success() {
            return Err(MachineError(format!(
                "mounting the overlay at {}: {}",
                self.root.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Copies the upper directory into `layer` (which must not exist), keeping owners, modes,
    /// times, hard links, extended attributes (overlayfs' opaque-directory marks) and device
    /// nodes (its whiteouts).
    pub async fn copy_upper_to(&self, layer: &Path) -> Result<(), MachineError> {
        super::rootfs::copy_tree(&self.upper, layer).await
    }
}

/// Escapes what the overlay mount options give a meaning to (`,`, `:` and `\`) in a path.
fn escape_option(path: &str) -> String {
    let mut escaped = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, ',' | ':' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape_option;

    #[test]
    fn option_separators_in_paths_are_escaped() {
        assert_eq!(escape_option("/var/lib/caph-sim/a"), "/var/lib/caph-sim/a");
        assert_eq!(escape_option("/a:b,c\\d"), "/a\\:b\\,c\\\\d");
    }
}
