//! The real installimage in a simulated rescue system: Hetzner's own, or the fork Cluster API Provider Hetzner uploads, from an unmodified archive checked by sha256, and the few stand-ins it needs on a machine that is not a real rescue system.
//!
//! The archives are not part of this project: tests read them from `../shared/vendor/installimage/`
//! (relative to the repository), and `caph-image build robot --sim --sim-installimage FILE` takes
//! one from the user. [`InstallimageArchive::open`] checks the digest and names a known archive;
//! [`InstallimageArchive::unpack_into`] puts its files where the rescue system keeps installimage.
//!
//! What runs for real and what does not is decided per run by the simulated installimage
//! (`installimage::why_simulated`): this kernel has no md, no device-mapper and no vfat, so
//! software RAID, LVM, encryption and UEFI layouts stay with the simulation.
//!
//! [`STUBS`] lists every program of the rescue system that is replaced, with the reason; nothing
//! else is.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::host::MachineError;

/// Which installimage an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallimageKind {
    /// hetzneronline/installimage, what Hetzner's rescue system runs.
    Hetzner,
    /// The fork Cluster API Provider Hetzner copies into the rescue system and runs.
    CaphFork,
}

/// A known archive: its file name in the vendor folder, its digest, and what it is.
struct Known {
    kind: InstallimageKind,
    file_name: &'static str,
    sha256: &'static str,
    label: &'static str,
}

/// The archives in `../shared/vendor/installimage/` (their README gives source, commit and
/// digest).
const KNOWN: &[Known] = &[
    Known {
        kind: InstallimageKind::Hetzner,
        file_name: "hetzneronline-installimage-d7805b2.tar.gz",
        sha256: "919acadfe849d7f7a85732f5cc57ce55dfbd010a49bf68b9ab41e7eb44ae7754",
        label: "Hetzner's installimage (hetzneronline/installimage d7805b2)",
    },
    Known {
        kind: InstallimageKind::CaphFork,
        file_name: "syself-hetzner-installimage-v1.0.8.tgz",
        sha256: "8bcb07593a34515547cc815513e8c689e0c46f75585228032e01a0ece1d0288c",
        label: "CAPH's installimage fork (syself hetzner-installimage v1.0.8)",
    },
];

impl InstallimageKind {
    /// The archive's file name in the vendor folder.
    pub fn vendor_file_name(self) -> &'static str {
        KNOWN
            .iter()
            .find(|known| known.kind == self)
            .map_or("", |known| known.file_name)
    }
}

/// An installimage archive whose digest was computed when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallimageArchive {
    pub path: PathBuf,
    pub sha256: String,
    /// `None` for an archive this project does not know (another commit).
    pub kind: Option<InstallimageKind>,
    /// What it is, for output: a known archive's name, else its file name and digest.
    pub label: String,
}

impl InstallimageArchive {
    /// Reads `path` and computes its sha256. A file named like a known archive must have that
    /// archive's digest: a mismatch is an error naming both.
    pub fn open(path: &Path) -> Result<InstallimageArchive, MachineError> {
        let bytes = std::fs::read(path).map_err(|failure| {
            MachineError(format!(
                "reading the installimage archive {}: {failure}",
                path.display()
            ))
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(named) = KNOWN.iter().find(|known| known.file_name == file_name)
            && named.sha256 != sha256
        {
            return Err(MachineError(format!(
                "{}: sha256 {sha256}, but {} is sha256 {}: the file was changed or is another version",
                path.display(),
                named.file_name,
                named.sha256
            )));
        }
        let known = KNOWN.iter().find(|known| known.sha256 == sha256);
        Ok(InstallimageArchive {
            path: path.to_owned(),
            label: match known {
                Some(known) => known.label.to_owned(),
                None => format!("installimage from {file_name} (sha256 {sha256})"),
            },
            kind: known.map(|known| known.kind),
            sha256,
        })
    }

    /// The archive of `kind` in a vendor folder (`../shared/vendor/installimage`), checked.
    pub fn vendored(vendor_dir: &Path, kind: InstallimageKind) -> Result<Self, MachineError> {
        let archive = InstallimageArchive::open(&vendor_dir.join(kind.vendor_file_name()))?;
        if archive.kind != Some(kind) {
            return Err(MachineError(format!(
                "{} is not the expected archive: {}",
                archive.path.display(),
                archive.label
            )));
        }
        Ok(archive)
    }

    /// Unpacks the archive's files (below its one top folder) into `dir`, which must be empty
    /// or missing, and checks that the `installimage` script is there.
    pub fn unpack_into(&self, dir: &Path) -> Result<(), MachineError> {
        std::fs::create_dir_all(dir)
            .map_err(|failure| MachineError(format!("creating {}: {failure}", dir.display())))?;
        let output = std::process::Command::new("tar")
            .args(["--extract", "--gzip", "--strip-components=1", "--file"])
            .arg(&self.path)
            .arg("--directory")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|failure| MachineError(format!("running tar: {failure}")))?;
        if !output.status.success() {
            return Err(MachineError(format!(
                "unpacking {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        if !dir.join("installimage").is_file() || !dir.join("config.sh").is_file() {
            return Err(MachineError(format!(
                "{} holds no installimage (no installimage and config.sh below its top folder)",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// A program of the rescue system replaced for the real installimage, and why.
#[derive(Debug)]
pub struct Stub {
    /// Where it goes in the rescue system (ahead of the real one in `PATH`); its file name is
    /// the program's, put in for `@PROGRAM@` in the script.
    pub path: &'static str,
    /// Why the real program cannot run here.
    pub reason: &'static str,
    pub script: &'static str,
}

/// Every stand-in a simulated rescue system has. Everything else installimage calls is the
/// rescue system's own program: sfdisk, parted, mkfs, tar, bsdtar, gpg, grub-install in the new
/// system, and so on. `udevadm` is real too: with `/sys` read-only its `trigger` changes nothing,
/// and the machine's udev stand-in makes the partition nodes and by-uuid links (`machine`
/// module's drives).
pub const STUBS: &[Stub] = &[
    Stub {
        path: "/usr/local/sbin/swapoff",
        reason: "installimage runs `swapoff -a`, which would act on the host's swap",
        script: "#!/bin/sh\n# caph-sim: swapoff -a would act on the host's swap; a rescue system has none.\nexit 0\n",
    },
    Stub {
        path: "/usr/local/bin/curl",
        reason: "installimage posts its debug log and the host keys' fingerprints to Hetzner with curl; the machines here have no internet, and traffic to other hosts is not allowed: a URL on a loopback address (a test's own server) goes to the real curl, any other is refused",
        script: LOOPBACK_ONLY,
    },
    Stub {
        path: "/usr/local/bin/wget",
        reason: "the same as curl, where installimage falls back to wget",
        script: LOOPBACK_ONLY,
    },
    Stub {
        path: "/usr/local/bin/systemd-nspawn",
        reason: "no systemd runs as PID 1 here, so nspawn cannot register a machine or make a scope unit: it runs with --register=no --keep-unit, and installimage's --property=DeviceAllow=... (which needs a unit) is dropped; the container itself is real",
        script: "#!/bin/bash\n# caph-sim: no systemd as PID 1 here: no machine registration, no scope unit, so no --property.\nargs=(--register=no --keep-unit)\nfor arg in \"$@\"; do\n  case \"$arg\" in\n    --property=*) ;;\n    *) args+=(\"$arg\") ;;\n  esac\ndone\nexec /usr/bin/systemd-nspawn \"${args[@]}\"\n",
    },
];

/// curl or wget (`@PROGRAM@`) for a rescue system without internet: every URL among the
/// arguments must be on a loopback address, or nothing is fetched.
const LOOPBACK_ONLY: &str = r#"#!/bin/sh
# caph-sim: no internet here. URLs on this machine's loopback addresses (a test's own server) are
# fetched by the real @PROGRAM@; anything else, such as installimage's reports to Hetzner, goes nowhere.
for argument in "$@"; do
  case "$argument" in
    *://*)
      host=${argument#*://}; host=${host%%/*}; host=${host##*@}
      case "$host" in
        127.*|localhost|localhost:*|"[::1]"|"[::1]:"*) ;;
        *) echo "@PROGRAM@ (caph-sim): no network in the simulated rescue system ($host)" >&2; exit 7 ;;
      esac ;;
  esac
done
exec /usr/bin/@PROGRAM@ "$@"
"#;

/// Writes [`STUBS`] into a rescue system's root.
pub fn write_stubs(root: &Path) -> Result<(), MachineError> {
    use std::os::unix::fs::PermissionsExt as _;
    for stub in STUBS {
        let path = root.join(stub.path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|failure| {
                MachineError(format!("creating {}: {failure}", parent.display()))
            })?;
        }
        let program = stub.path.rsplit('/').next().unwrap_or_default();
        std::fs::write(&path, stub.script.replace("@PROGRAM@", program))
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|failure| MachineError(format!("writing {}: {failure}", path.display())))?;
    }
    Ok(())
}
