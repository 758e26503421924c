//! The base root filesystem: made by mmdebstrap with the boot chain included, or unpacked from a
//! pinned base tarball after its sha256 was checked; and the checks that say what the host lacks.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use caph_core::Arch;
use caph_core::backend::{ProgressEvent, ProgressSink};
use caph_core::spec::{Base, Distribution, ImageSpec, RootfsBase};
use sha2::{Digest, Sha256};

use super::AssembleError;
use super::run::{indent_tail, run_streamed};
use crate::pack::Cancel;

/// Boot-chain packages every image gets, whatever the distribution and architecture: what
/// installimage needs to make the tree boot (initramfs, software RAID, LVM), log in (sshd), name
/// interfaces (udev) and run systemd as init.
pub const BOOT_CHAIN_PACKAGES: &[&str] = &[
    "initramfs-tools",
    "mdadm",
    "lvm2",
    "openssh-server",
    "udev",
    "systemd-sysv",
];

/// The default Debian mirror.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's security archive, added when the default mirror is used.
pub const DEBIAN_SECURITY_MIRROR: &str = "http://security.debian.org/debian-security";
/// The default Ubuntu mirror for amd64.
pub const UBUNTU_MIRROR: &str = "http://archive.ubuntu.com/ubuntu";
/// The default Ubuntu mirror for arm64 (ports).
pub const UBUNTU_PORTS_MIRROR: &str = "http://ports.ubuntu.com/ubuntu-ports";

/// Bytes read per call when hashing or copying a base tarball.
const COPY_BUFFER: usize = 1 << 20;
/// A byte-progress event at most every this many bytes of a base tarball: often enough to see
/// a download move, rarely enough not to flood a verbose log.
const PROGRESS_STEP: u64 = 16 << 20;

/// The packages installed into the base for installimage: [`BOOT_CHAIN_PACKAGES`] plus the
/// kernel, grub for the architecture (BIOS and UEFI on amd64, UEFI on arm64), and what the
/// network configuration installimage writes needs: on Debian ifupdown, and net-tools for the
/// `up route add` lines of its stanza; on Ubuntu netplan.io, and systemd-resolved, which
/// installimage links `/etc/resolv.conf` to (a package of its own since Ubuntu 23.04; part of
/// systemd before).
pub fn boot_chain(base: &Base, arch: Arch) -> Vec<&'static str> {
    let mut packages = BOOT_CHAIN_PACKAGES.to_vec();
    packages.push(match (base.distribution, arch) {
        (Distribution::Ubuntu, _) => "linux-image-generic",
        (Distribution::Debian, Arch::X86) => "linux-image-amd64",
        (Distribution::Debian, Arch::Arm) => "linux-image-arm64",
    });
    match arch {
        Arch::X86 => packages.extend(["grub-pc", "grub-efi-amd64-bin"]),
        Arch::Arm => packages.push("grub-efi-arm64"),
    }
    match base.distribution {
        Distribution::Ubuntu => {
            packages.push("netplan.io");
            if ubuntu_year(&base.version).is_some_and(|year| year >= 23) {
                packages.push("systemd-resolved");
            }
        }
        Distribution::Debian => packages.extend(["ifupdown", "net-tools"]),
    }
    packages
}

/// The year of an Ubuntu version (`24` of `24.04`).
fn ubuntu_year(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// The mirror mmdebstrap uses: the spec's, or the distribution's default for the architecture.
pub fn default_mirror(distribution: Distribution, arch: Arch) -> &'static str {
    match (distribution, arch) {
        (Distribution::Debian, _) => DEBIAN_MIRROR,
        (Distribution::Ubuntu, Arch::X86) => UBUNTU_MIRROR,
        (Distribution::Ubuntu, Arch::Arm) => UBUNTU_PORTS_MIRROR,
    }
}

/// The Debian architecture of this machine, when it is one this tool builds for.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::X86),
        "aarch64" => Some(Arch::Arm),
        _ => None,
    }
}

/// Finds `program` in `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Everything this host lacks to assemble `spec` for `arch`, one line each with the fix; empty
/// when the build can start. Root comes first, as most of the rest follows from it.
pub fn missing_requirements(spec: &ImageSpec, arch: Arch) -> Vec<String> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push(
            "building a root filesystem needs root (mmdebstrap, chroot and mounts): run \
             caph-image as root, for example with sudo"
                .to_owned(),
        );
    }
    let mut programs: Vec<(&str, &str)> = vec![
        ("chroot", "coreutils"),
        ("unshare", "util-linux"),
        ("tar", "tar (GNU tar)"),
        ("dpkg-query", "dpkg"),
    ];
    match &spec.base.rootfs {
        Some(RootfsBase::Mmdebstrap { .. }) | None => programs.push(("mmdebstrap", "mmdebstrap")),
        Some(RootfsBase::Tarball { location, .. }) if is_url(location) => {
            programs.push(("curl", "curl"));
        }
        Some(RootfsBase::Tarball { .. }) => {}
    }
    for (program, package) in programs {
        if find_program(program).is_none() {
            missing.push(format!(
                "{program} is not installed (Debian package {package})"
            ));
        }
    }
    if host_arch() != Some(arch) {
        let handler = match arch {
            Arch::X86 => "qemu-x86_64",
            Arch::Arm => "qemu-aarch64",
        };
        if !Path::new("/proc/sys/fs/binfmt_misc").join(handler).exists() {
            missing.push(format!(
                "building for {} on a {} host needs qemu-user's binfmt handler {handler} \
                 (Debian packages qemu-user-static and binfmt-support)",
                arch.debian_name(),
                std::env::consts::ARCH
            ));
        }
    }
    missing
}

fn is_url(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// Makes the base tree at `root` (which must not exist yet) with mmdebstrap: the suite, mirror,
/// variant and components of the spec, the boot chain included. mmdebstrap runs in a private
/// mount namespace, so the mounts it makes inside the tree vanish with it even when killed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mmdebstrap(
    spec: &ImageSpec,
    suite: &str,
    mirror: Option<&str>,
    variant: &str,
    components: &[String],
    arch: Arch,
    root: &Path,
    scope: &str,
    cancel: &Cancel,
    progress: &dyn ProgressSink,
) -> Result<(), AssembleError> {
    let distribution = spec.base.distribution;
    // Each part is one field of an apt sources line: a line break would add a source of its own.
    for value in [suite]
        .into_iter()
        .chain(mirror)
        .chain(components.iter().map(String::as_str))
    {
        caph_core::text::field_in("the apt sources mmdebstrap writes", value)
            .map_err(|refused| AssembleError::Spec(refused.to_string()))?;
    }
    let components = components.join(" ");
    let mut sources = Vec::new();
    match mirror {
        Some(mirror) => {
            // A mirror of one's own may be all there is (an air-gapped site): nothing else added.
            sources.push(format!("deb {mirror} {suite} {components}"));
            sources.push(format!("deb {mirror} {suite}-updates {components}"));
        }
        None => {
            let mirror = default_mirror(distribution, arch);
            sources.push(format!("deb {mirror} {suite} {components}"));
            sources.push(format!("deb {mirror} {suite}-updates {components}"));
            match distribution {
                Distribution::Debian => sources.push(format!(
                    "deb {DEBIAN_SECURITY_MIRROR} {suite}-security {components}"
                )),
                Distribution::Ubuntu => {
                    sources.push(format!("deb {mirror} {suite}-security {components}"));
                }
            }
        }
    }
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child",
            "--",
            "mmdebstrap",
            "--mode=root",
            "--format=directory",
        ])
        .arg(format!("--variant={variant}"))
        .arg(format!("--architectures={}", arch.debian_name()))
        .arg(format!(
            "--include={}",
            boot_chain(&spec.base, arch).join(",")
        ))
        // Transient mirror hiccups should not fail a build that takes minutes.
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg(suite)
        .arg(root)
        .args(&sources)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let finished = run_streamed(
        command,
        "running mmdebstrap (Debian package mmdebstrap)",
        scope,
        cancel,
        progress,
    )?;
    if !finished.status.success() {
        return Err(AssembleError::Base(format!(
            "mmdebstrap {suite} {} exited with status {}; its last output:\n{}",
            arch.debian_name(),
            super::run::describe_status(finished.status),
            indent_tail(&finished.tail)
        )));
    }
    Ok(())
}

/// Fetches the base tarball at `location` (a path relative to `spec_dir`, or an http(s) URL)
/// into `work_dir`, hashing it on the way, and refuses it with both digests when its sha256 is
/// not `expected`; only then extracts it into `root` with GNU tar (`--numeric-owner --xattrs`).
#[allow(clippy::too_many_arguments)]
pub fn unpack_base_tarball(
    location: &str,
    expected: &str,
    spec_dir: &Path,
    work_dir: &Path,
    root: &Path,
    scope: &str,
    cancel: &Cancel,
    progress: &dyn ProgressSink,
) -> Result<(), AssembleError> {
    let io_error = |what: String| move |source: io::Error| AssembleError::Io { what, source };
    let local = work_dir.join("base.tar");
    let mut out =
        File::create(&local).map_err(io_error(format!("creating {}", local.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_BUFFER];
    let mut done = 0u64;
    let mut reported = 0u64;
    let mut copy = |input: &mut dyn Read, source: &str| -> Result<(), AssembleError> {
        loop {
            if cancel.is_cancelled() {
                return Err(AssembleError::Cancelled);
            }
            let read = input
                .read(&mut buffer)
                .map_err(io_error(format!("reading the base tarball {source}")))?;
            if read == 0 {
                progress.event(ProgressEvent::Bytes {
                    scope: scope.to_owned(),
                    done,
                    total: None,
                });
                return Ok(());
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read])
                .map_err(io_error(format!("writing {}", local.display())))?;
            done += read as u64;
            if done - reported >= PROGRESS_STEP {
                reported = done;
                progress.event(ProgressEvent::Bytes {
                    scope: scope.to_owned(),
                    done,
                    total: None,
                });
            }
        }
    };
    if is_url(location) {
        let mut child = Command::new("curl")
            .args([
                "--fail",
                "--silent",
                "--show-error",
                "--location",
                "--retry",
                "3",
            ])
            .arg(location)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error("running curl (Debian package curl)".to_owned()))?;
        let copied = match child.stdout.take() {
            Some(mut stdout) => copy(&mut stdout, location),
            None => Ok(()),
        };
        if copied.is_err() {
            let _ = child.kill();
        }
        let output = child
            .wait_with_output()
            .map_err(io_error("waiting for curl".to_owned()))?;
        copied?;
        if !output.status.success() {
            return Err(AssembleError::Base(format!(
                "downloading {location} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    } else {
        // Inside the spec's directory, symlinks resolved, and a regular file (crate::input).
        let directory = crate::input::SpecDirectory::open(spec_dir)
            .map_err(|error| AssembleError::Base(format!("the base tarball: {error}")))?;
        let mut input = directory
            .open_file(location)
            .map_err(|error| AssembleError::Base(format!("the base tarball {error}")))?;
        let path = spec_dir.join(location);
        copy(&mut input, &path.display().to_string())?;
    }
    out.sync_all()
        .map_err(io_error(format!("writing {}", local.display())))?;
    drop(out);
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        let _ = fs::remove_file(&local);
        return Err(AssembleError::ChecksumMismatch {
            location: location.to_owned(),
            expected: expected.to_ascii_lowercase(),
            actual,
        });
    }
    fs::create_dir_all(root).map_err(io_error(format!("creating {}", root.display())))?;
    let mut command = Command::new("tar");
    command
        .args([
            "--extract",
            "--numeric-owner",
            "--preserve-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "--file",
        ])
        .arg(&local)
        .arg("--directory")
        .arg(root);
    let finished = run_streamed(command, "running GNU tar", scope, cancel, progress)?;
    let _ = fs::remove_file(&local);
    if !finished.status.success() {
        return Err(AssembleError::Base(format!(
            "extracting the base tarball {location} failed with status {}:\n{}",
            super::run::describe_status(finished.status),
            indent_tail(&finished.tail)
        )));
    }
    Ok(())
}
