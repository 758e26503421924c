//! The image spec: one TOML file that declares one Kubernetes node image.
//!
//! [`load`] parses and validates a spec, reading the files it references through [`SpecFiles`],
//! and reports every problem at once as [`Diagnostics`](crate::Diagnostics). The format is
//! documented for users in `images/README.md`.

mod compat;
mod layout;
mod line_values;
mod load;
mod reader;

use std::collections::BTreeMap;

pub use layout::{
    CryptPassword, DiskLayout, DriveRef, LayoutProblem, LogicalVolume, Partition, SMALLEST_HINT,
    Size, WWN_HINT_PREFIX, validate_layout,
};
pub use load::{KUBERNETES_COMPONENTS, RESERVED_LABELS, SpecFiles, load, load_as_of};

use crate::arch::Arch;
use crate::diagnostic::Diagnostic;
use crate::version::Version;

/// A validated image spec. Every field here has passed the checks in `load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The spec file as the user named it.
    pub file: String,
    /// sha256 (hex) over the spec and every file it references: changes to scripts change it too.
    pub digest: String,
    /// What the image is called and how it is labelled.
    pub image: Identity,
    /// What the image starts from.
    pub base: Base,
    /// The Kubernetes components.
    pub kubernetes: Kubernetes,
    /// containerd release artifacts.
    pub containerd: Artifact,
    /// runc release artifacts.
    pub runc: Artifact,
    /// crictl release artifacts.
    pub crictl: Artifact,
    /// The CNI plugins' release artifacts, where Kubernetes comes from release binaries (the apt
    /// packages bring their own).
    pub cni: Option<Artifact>,
    /// The pause image containerd's CRI runs pod sandboxes from: `containerd.sandbox_image`, or
    /// the one kubeadm uses for the Kubernetes release ([`crate::releases::PAUSE_VERSIONS`]).
    pub sandbox_image: String,
    /// Packages, kernel settings, files and scripts.
    pub system: System,
    /// Hetzner Cloud settings, when the spec builds snapshots.
    pub hcloud: Option<Hcloud>,
    /// Dedicated-server settings, when the spec installs on bare metal.
    pub robot: Option<Robot>,
    /// Problems that do not stop a build (a release past its end of life); `validate --strict`
    /// fails on them.
    pub warnings: Vec<Diagnostic>,
}

impl ImageSpec {
    /// The first 12 hex digits of the digest, short enough for a label value.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

/// The image's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `caph-image-name` label value that Cluster API Provider Hetzner looks up.
    pub name: String,
    /// Free text for the snapshot description.
    pub description: Option<String>,
    /// Extra labels set on the snapshot, beside the ones the tool sets.
    pub labels: BTreeMap<String, String>,
}

/// The Linux distributions a node image can be based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Ubuntu: netplan networking on bare metal.
    Ubuntu,
    /// Debian: ifupdown networking on bare metal.
    Debian,
}

impl Distribution {
    /// Lower-case name as used in specs and os labels.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Ubuntu => "ubuntu",
            Distribution::Debian => "debian",
        }
    }

    /// Capitalised name as installimage file names use it.
    pub fn title(self) -> &'static str {
        match self {
            Distribution::Ubuntu => "Ubuntu",
            Distribution::Debian => "Debian",
        }
    }
}

/// What the image starts from, per target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The distribution.
    pub distribution: Distribution,
    /// Its version as written (`24.04`, `12`).
    pub version: String,
    /// Its codename (`noble`, `bookworm`).
    pub codename: String,
    /// The last part of the installimage file name (`k8s-v1.36.0`).
    pub flavor: String,
    /// The Hetzner Cloud system image per architecture (`ubuntu-24.04`).
    pub hcloud_images: BTreeMap<Arch, String>,
    /// The root filesystem for tarballs: the spec's `[base.rootfs]`, or mmdebstrap of the
    /// codename's suite when it has none (always `Some` for a loaded spec).
    pub rootfs: Option<RootfsBase>,
}

impl Base {
    /// The version digits installimage expects in a file name: `2404` for 24.04, `1200` for 12.
    pub fn installimage_version(&self) -> String {
        let mut parts = self.version.split('.');
        let major = parts.next().unwrap_or_default();
        let minor = parts.next().unwrap_or("0");
        format!("{major}{minor:0>2}")
    }

    /// The installimage file name without extension: `Ubuntu-2404-noble-amd64-k8s-v1.36.0`.
    pub fn installimage_stem(&self, arch: Arch) -> String {
        format!(
            "{}-{}-{}-{}-{}",
            self.distribution.title(),
            self.installimage_version(),
            self.codename,
            arch.debian_name(),
            self.flavor
        )
    }
}

/// Where a tarball's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsBase {
    /// Built with mmdebstrap.
    Mmdebstrap {
        /// The suite (`noble`, `bookworm`).
        suite: String,
        /// The archive mirror URL; `None` means the distribution's default for the architecture.
        mirror: Option<String>,
        /// The mmdebstrap variant (`minbase`, `important`, ...).
        variant: String,
        /// Archive components (`main`, `universe`).
        components: Vec<String>,
    },
    /// An existing root filesystem tarball, verified by sha256 before use.
    Tarball {
        /// A path beside the spec, or an http(s) URL.
        location: String,
        /// The expected sha256 (hex).
        sha256: String,
    },
}

/// Where the Kubernetes components come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubernetesSource {
    /// The pkgs.k8s.io apt repository (or a mirror of it). apt verifies packages by the repository's signature.
    Apt {
        /// The repository for this minor version, ending in `/deb/`.
        repository: String,
        /// The URL of the repository's signing key.
        key_url: String,
        /// The key's sha256, when pinned.
        key_sha256: Option<String>,
    },
    /// Release binaries from a download base URL (`{base}/v{version}/bin/linux/{arch}/kubelet`).
    Binaries {
        /// The base URL.
        base_url: String,
        /// Pinned sha256 per architecture and component (`kubelet`, `kubeadm`, `kubectl`).
        sha256: BTreeMap<Arch, BTreeMap<String, String>>,
    },
}

/// The Kubernetes components of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// kubelet, kubeadm and kubectl are installed at exactly this version.
    pub version: Version,
    /// Where they come from.
    pub source: KubernetesSource,
    /// Whether to pull the control-plane images into the image (faster node start, bigger image).
    pub prepull_images: bool,
}

/// A pinned release artifact: containerd, runc or crictl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The exact version.
    pub version: Version,
    /// The release download base URL; the file layout under it is the upstream one.
    pub base_url: String,
    /// Pinned sha256 per architecture; without a pin the upstream checksum file is used.
    pub sha256: BTreeMap<Arch, String>,
}

/// System configuration of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// Extra distribution packages.
    pub packages: Vec<String>,
    /// Kernel modules loaded at boot, beyond `overlay` and `br_netfilter` which are always there.
    pub kernel_modules: Vec<String>,
    /// sysctls, beyond the ones every node gets (`plan::REQUIRED_SYSCTLS`), which are always set (and can be overridden here).
    pub sysctls: BTreeMap<String, String>,
    /// Swap is turned off and removed from fstab (kubelet's default refuses to run with swap).
    pub disable_swap: bool,
    /// Whether apt's timers and unattended-upgrades may run on the node; off by default, so that
    /// nothing upgrades a node behind the cluster's back.
    pub automatic_upgrades: bool,
    /// Files placed into the image, in order.
    pub files: Vec<FileSpec>,
    /// Scripts run in order after everything else but hygiene.
    pub scripts: Vec<ScriptSpec>,
}

/// A file placed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute path in the image.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// `user:group`, names or numbers.
    pub owner: String,
    /// The content, inline in the spec or read from a file beside it.
    pub content: Vec<u8>,
}

/// A user script, read from a file beside the spec; run by bash with `set -euo pipefail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    /// The path as written in the spec (relative to the spec's directory).
    pub path: String,
    /// The script's text.
    pub content: String,
}

/// Hetzner Cloud build settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hcloud {
    /// The architectures to build, in order.
    pub architectures: Vec<Arch>,
    /// Locations of the temporary build server, in order of preference: a build takes the first
    /// where a preferred type can be ordered (`fsn1`, `nbg1`, `hel1` unless the spec says).
    pub locations: Vec<String>,
    /// Server types per architecture, in order of preference; the first is the smallest type the
    /// image will be deployed on (a snapshot's disk is the build server's and never shrinks).
    pub server_types: BTreeMap<Arch, Vec<String>>,
}

/// Locations a spec without `location` or `locations` builds in, in this order: the three
/// eu-central sites, which share prices and network zone.
pub const DEFAULT_LOCATIONS: &[&str] = &["fsn1", "nbg1", "hel1"];

/// Dedicated-server install settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    /// Hostname pattern; `{server_number}` is replaced by the server's number.
    pub hostname: String,
    /// The disk layout for installimage.
    pub disk: DiskLayout,
}
