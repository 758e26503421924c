//! System images as real Debian root filesystems: built once with mmdebstrap, cached, copied per machine.
//!
//! Only Debian's archive is reachable from the machines this project builds and tests on (Ubuntu's
//! is not), so the `ubuntu-*` system images are backed by a Debian bookworm root filesystem. A
//! provisioning plan that uses apt, systemd, kmod and friends runs the same there; anything that
//! depends on Ubuntu's own packages or its `/etc/os-release` does not, and tests must not pretend
//! otherwise.
//!
//! Cache layout, under the cache directory (default `/var/cache/caph-sim/rootfs`):
//! `<suite>-<arch>/root/` is the root filesystem and `<suite>-<arch>/complete` the marker naming
//! what was installed. A build happens in `.build-<suite>-<arch>-<pid>-<start>/` and is renamed into
//! place only when mmdebstrap succeeded, so a killed build is never taken for a finished one; its
//! leftovers are swept by the next run once its process is gone.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{MachineLog, sys};
use sha2::Digest as _;

use crate::host::MachineError;

/// Packages every simulated machine has on top of Debian's minbase: what a provisioning plan needs
/// (apt with HTTPS and keys, curl, kmod for modules-load, procps for sysctl, iproute2, systemd so
/// that `systemctl enable` works in the chroot, util-linux) plus the loader of cloud-init's world,
/// bash.
pub const ROOTFS_PACKAGES: &[&str] = &[
    "apt",
    "bash",
    "ca-certificates",
    // Hetzner's system images run cloud-init at boot; so do the simulated ones (`boot`).
    "cloud-init",
    "coreutils",
    "locales",
    // cloud-init makes the image's own host keys with its ssh-keygen (sshd itself is the host's).
    "openssh-server",
    "curl",
    "gnupg",
    "iproute2",
    "kmod",
    "procps",
    "systemd",
    "util-linux",
];

/// What goes into every system image besides its suite and architecture.
fn recipe() -> String {
    format!(
        "packages={} locale={SYSTEM_LOCALE}",
        ROOTFS_PACKAGES.join(",")
    )
}

/// The locale generated in every system image (its name in `/etc/locale.gen`).
const SYSTEM_LOCALE: &str = "en_US.UTF-8";

/// Lines of mmdebstrap's output quoted when a build fails: enough to see apt's complaint.
const BUILD_ERROR_TAIL_LINES: usize = 15;

/// A system image resolved to what builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemImage {
    /// The Debian suite that backs it.
    pub suite: &'static str,
    /// Debian's architecture name.
    pub debian_arch: &'static str,
}

impl SystemImage {
    /// The cache key, `<suite>-<arch>-<packages digest>`: a tree built with another package set
    /// lives beside this one rather than in its place, so that two versions of this code sharing
    /// the cache (two checkouts, a test run and a benchmark) never rebuild each other's trees,
    /// nor remove one that a machine's overlay still uses as its lower layer.
    pub fn key(&self) -> String {
        let digest = sha2::Sha256::digest(recipe().as_bytes());
        format!(
            "{}-{}-{}",
            self.suite,
            self.debian_arch,
            &hex::encode(digest)[..8]
        )
    }
}

/// Maps a Hetzner system image name and architecture to the Debian root filesystem behind it.
pub(crate) fn resolve(name: &str, architecture: &str) -> Result<SystemImage, MachineError> {
    let suite = match name {
        "debian-12" => "bookworm",
        "debian-13" => "trixie",
        // Backed by Debian: see the module documentation.
        "ubuntu-22.04" | "ubuntu-24.04" => "bookworm",
        other => {
            return Err(MachineError(format!(
                "no root filesystem is known for system image {other}; known: debian-12, debian-13, ubuntu-22.04, ubuntu-24.04"
            )));
        }
    };
    let debian_arch = match architecture {
        "x86" => "amd64",
        "arm" => "arm64",
        other => {
            return Err(MachineError(format!(
                "unknown architecture {other}; known: x86, arm"
            )));
        }
    };
    Ok(SystemImage { suite, debian_arch })
}

/// Whether foreign-architecture binaries can run here, and if not, what to install.
pub(crate) fn foreign_arch_problem(image: &SystemImage) -> Option<String> {
    let native = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    if image.debian_arch == native {
        return None;
    }
    let qemu = match image.debian_arch {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        other => other,
    };
    let entry = PathBuf::from(format!("/proc/sys/fs/binfmt_misc/qemu-{qemu}"));
    match std::fs::read_to_string(&entry) {
        Ok(text) if text.lines().next() == Some("enabled") => None,
        Ok(_) => Some(format!(
            "{} machines need the qemu-{qemu} binfmt handler, which is registered but disabled: run `update-binfmts --enable qemu-{qemu}`",
            image.debian_arch
        )),
        Err(_) => Some(format!(
            "{} machines need user-mode emulation: install the Debian packages qemu-user-static and binfmt-support \
             (`apt-get install qemu-user-static binfmt-support`) and make sure binfmt_misc is mounted \
             (`mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc`); {} is missing",
            image.debian_arch,
            entry.display()
        )),
    }
}

/// The cache of built root filesystems.
pub(crate) struct RootfsCache {
    pub dir: PathBuf,
    pub mirror: Option<String>,
    /// One build at a time in this process (a build uses both cores and the network anyway);
    /// other processes are kept out by a lock file.
    build_lock: tokio::sync::Mutex<()>,
}

impl RootfsCache {
    pub fn new(dir: PathBuf, mirror: Option<String>) -> RootfsCache {
        RootfsCache {
            dir,
            mirror,
            build_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The marker text for the current package set: a cache built with other packages is rebuilt.
    fn marker_text(&self, image: &SystemImage) -> String {
        format!(
            "suite={} arch={} variant=minbase {}\n",
            image.suite,
            image.debian_arch,
            recipe()
        )
    }

    /// Returns the root filesystem directory of `image`, building it first if needed.
    pub async fn ensure(
        &self,
        image: &SystemImage,
        log: &Option<MachineLog>,
    ) -> Result<PathBuf, MachineError> {
        let final_dir = self.dir.join(image.key());
        // A cached foreign root filesystem is no use without qemu-user to run its commands.
        if let Some(problem) = foreign_arch_problem(image) {
            return Err(MachineError(problem));
        }
        if self.is_complete(image, &final_dir) {
            return Ok(final_dir.join("root"));
        }
        let _in_process = self.build_lock.lock().await;
        let lock_path = self.dir.join(format!(".lock-{}", image.key()));
        let lock_file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(file) => file,
            Err(error) => {
                return Err(MachineError(format!(
                    "opening {}: {error}",
                    lock_path.display()
                )));
            }
        };
        let locked =
            tokio::task::spawn_blocking(move || lock_file.lock().map(|()| lock_file)).await;
        let _lock_file = match locked {
            Ok(Ok(file)) => file,
            Ok(Err(error)) => {
                return Err(MachineError(format!(
                    "locking {}: {error}",
                    lock_path.display()
                )));
            }
            Err(error) => {
                return Err(MachineError(format!(
                    "locking {}: {error}",
                    lock_path.display()
                )));
            }
        };
        // Another process may have finished the build while we waited for the lock.
        if self.is_complete(image, &final_dir) {
            return Ok(final_dir.join("root"));
        }
        self.build(image, &final_dir, log).await?;
        Ok(final_dir.join("root"))
    }

    fn is_complete(&self, image: &SystemImage, final_dir: &Path) -> bool {
        match std::fs::read_to_string(final_dir.join("complete")) {
            Ok(text) => text == self.marker_text(image),
            Err(_) => false,
        }
    }

    async fn build(
        &self,
        image: &SystemImage,
        final_dir: &Path,
        log: &Option<MachineLog>,
    ) -> Result<(), MachineError> {
        let stamp = sys::owner_stamp();
        let stamp_name = stamp.split_whitespace().collect::<Vec<_>>().join("-");
        let build_dir = self
            .dir
            .join(format!(".build-{}-{stamp_name}", image.key()));
        let _ = sys::remove_tree(&build_dir);
        if let Err(error) = std::fs::create_dir_all(&build_dir) {
            return Err(MachineError(format!(
                "creating {}: {error}",
                build_dir.display()
            )));
        }
        // Removes the half-made build if this future is dropped (its machine deleted, the host
        // dropped) or fails; disarmed once the build is renamed into place.
        let mut guard = BuildDirGuard {
            path: Some(build_dir.clone()),
        };
        let root = build_dir.join("root");
        if let Some(log) = log {
            log(&format!(
                "building the {} root filesystem with mmdebstrap (once; cached in {})",
                image.key(),
                self.dir.display()
            ));
        }
        // In a private mount namespace: the /proc, /sys and /dev mounts mmdebstrap makes inside the
        // target vanish with it even if it is killed, instead of lingering on the host.
        let mut command = tokio::process::Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--kill-child",
                "--",
                "mmdebstrap",
            ])
            .arg("--variant=minbase")
            .arg("--mode=root")
            .arg("--format=directory")
            .arg(format!("--arch={}", image.debian_arch))
            .arg(format!("--include={}", ROOTFS_PACKAGES.join(",")))
            // The locale Hetzner's system images have, which cloud-init's locale module sets.
            .arg(format!(
                "--customize-hook=chroot \"$1\" sh -c \"sed -i 's/^# *{SYSTEM_LOCALE} /{SYSTEM_LOCALE} /' /etc/locale.gen && locale-gen\""
            ))
            // Transient mirror hiccups should not fail a build that takes a minute.
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg(image.suite)
            .arg(&root);
        if let Some(mirror) = &self.mirror {
            command.arg(mirror);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let outcome = run_logged(command, log).await;
        let result = match outcome {
            Ok((status, _)) if status.success() => Ok(()),
            Ok((status, tail)) => Err(MachineError(format!(
                "mmdebstrap {} {} failed ({status}); last output:\n{}",
                image.suite,
                image.debian_arch,
                tail.join("\n")
            ))),
            Err(error) => Err(MachineError(format!(
                "running mmdebstrap (Debian package mmdebstrap): {error}"
            ))),
        };
        if let Err(error) = result {
            let _ = sys::remove_tree(&build_dir);
            return Err(error);
        }
        let marker = build_dir.join("complete");
        let finish = std::fs::write(&marker, self.marker_text(image)).and_then(|()| {
            // A stale cache (other packages) is moved aside before the new one takes its place.
            if final_dir.exists() {
                let stale = self
                    .dir
                    .join(format!(".stale-{}-{stamp_name}", image.key()));
                std::fs::rename(final_dir, &stale)?;
                sys::remove_tree(&stale)?;
            }
            std::fs::rename(&build_dir, final_dir)
        });
        if let Err(error) = finish {
            let _ = sys::remove_tree(&build_dir);
            return Err(MachineError(format!(
                "finishing the {} root filesystem: {error}",
                image.key()
            )));
        }
        guard.path = None;
        if let Some(log) = log {
            log(&format!(
                "built the {} root filesystem in {:.0?}",
                image.key(),
                started.elapsed()
            ));
        }
        Ok(())
    }

    /// Removes build directories left by processes that are gone.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(".build-") || name.starts_with(".stale-")) {
                continue;
            }
            // The name ends in `-<pid>-<start time>`.
            let mut parts = name.rsplitn(3, '-');
            let (Some(start), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !sys::owner_alive(&format!("{pid} {start}")) {
                let _ = sys::remove_tree(&entry.path());
            }
        }
    }
}

/// Removes a build directory when dropped, unless disarmed.
struct BuildDirGuard {
    path: Option<PathBuf>,
}

impl Drop for BuildDirGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = sys::remove_tree(&path);
        }
    }
}

/// Runs `command`, passing its output lines to `log`, and returns its status and last lines.
async fn run_logged(
    mut command: tokio::process::Command,
    log: &Option<MachineLog>,
) -> std::io::Result<(std::process::ExitStatus, Vec<String>)> {
    let mut child = command.spawn()?;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    if let Some(stdout) = stdout {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(line);
            }
        });
    }
    if let Some(stderr) = stderr {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(line);
            }
        });
    }
    drop(sender);
    while let Some(line) = receiver.recv().await {
        if let Some(log) = log {
            log(&line);
        }
        tail.push_back(line);
        if tail.len() > BUILD_ERROR_TAIL_LINES {
            tail.pop_front();
        }
    }
    let status = child.wait().await?;
    Ok((status, tail.into_iter().collect()))
}

/// Copies a root filesystem with owners, modes, timestamps, hard links, extended attributes and
/// device nodes intact (`cp -a`), sharing blocks where the filesystem can (`--reflink=auto`).
pub(crate) async fn copy_tree(source: &Path, destination: &Path) -> Result<(), MachineError> {
    let output = tokio::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--one-file-system", "--"])
        .arg(source)
        .arg(destination)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(MachineError(format!(
            "copying {} to {} failed: {}",
            source.display(),
            destination.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
        Err(error) => Err(MachineError(format!("running cp: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_images_resolve_to_debian_suites() {
        assert!(
            resolve("debian-12", "x86")
                .unwrap()
                .key()
                .starts_with("bookworm-amd64-")
        );
        assert!(
            resolve("debian-13", "arm")
                .unwrap()
                .key()
                .starts_with("trixie-arm64-")
        );
        assert_eq!(resolve("ubuntu-24.04", "x86").unwrap().suite, "bookworm");
        assert!(
            resolve("fedora-40", "x86")
                .unwrap_err()
                .0
                .contains("known: debian-12")
        );
        assert!(resolve("debian-12", "riscv").is_err());
    }
}
