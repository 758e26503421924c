//! A node image booted on this machine the way a dedicated server boots it: an installimage
//! tarball installed on a local disk as Hetzner's installimage installs it, the disk booted under
//! QEMU through its own boot loader, cloud-init's first boot run with a NoCloud seed, and the
//! result read back from the disk once the node powered off.
//!
//! - [`tarball`]: what a tarball holds, looked at before anything is made.
//! - [`user_data`]: user data checked as cloud-init will read it.
//! - [`installimage`]: the files installimage writes into a new system.
//! - [`loop_device`]: disk images on loop devices, detached on drop.
//! - [`namespace`]: scripts run in a mount namespace of their own, so that no mount they make is
//!   ever seen by (or caught in) another process's namespace, and all of them go when it ends.
//! - [`install`]: the local install (partitions, file systems, extraction, the installimage
//!   files, host keys, initramfs and GRUB).
//! - [`qemu`]: a VM booting a disk, its serial console in a file, powered off cleanly.
//! - [`console`]: what a boot's console says (milestones for progress, failed units).
//! - [`verify`]: `caph-image verify tarball`, all of the above in order, with cleanup on every
//!   path.
//!
//! Everything that is made (the disk, its loop device, mounts, the VM) is undone when the value
//! holding it is dropped, so a cancelled future cleans up as a finished one does.

#![deny(missing_docs)]

mod child;
pub mod console;
pub mod install;
pub mod installimage;
pub mod loop_device;
pub mod namespace;
pub mod qemu;
pub mod tarball;
pub mod user_data;
pub mod verify;

/// Why booting an image did not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The input cannot be verified: not a tarball, no cloud-init, user data that is not
    /// cloud-config (each message names the problem).
    #[error("{}", .0.join("; "))]
    Input(Vec<String>),
    /// This machine cannot do it: not root, a program missing (the message names the package).
    #[error("{0}")]
    Machine(String),
    /// A step failed.
    #[error("{what}: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The run was cancelled; what was made is undone.
    #[error("cancelled during {phase}; {cleanup}")]
    Cancelled {
        /// Where it was.
        phase: &'static str,
        /// What the cleanup did.
        cleanup: String,
    },
}
