//! installimage's file-name rule for custom images: `<Distro>-<NNNN>-<codename>-<arch>-<flavor>`
//! plus the extension of the compression, e.g. `Ubuntu-2404-noble-amd64-k8s-v1.31.2.tar.gz`.
//!
//! installimage reads the distribution, version and architecture from the **file name**, not
//! from the tarball:
//! - distribution: the first of `suse`, `centos`, `ubuntu`, `arch`, `rocky`, `alma`, `rhel`
//!   found anywhere in the lower-cased name wins, else Debian. So a flavor such as `archive` or
//!   `almalinux-like` would turn a Debian image into an Arch or Alma one;
//! - version: the second `-`-separated field, compared numerically (`2404`, `1200`);
//! - architecture: `-(32|64|i386|amd64|arm64)-` must match and agree with the machine.
//!
//! [`ImageName`] only builds names that installimage reads back as what they are.
//!
//! Cluster API Provider Hetzner's `installImage.image.url` accepts `tar`, `tar.gz`, `tar.bz`,
//! `tar.bz2`, `tar.xz`, `tgz`, `tbz`, `txz`, but **not `tar.zst`**, although installimage
//! itself does (see [`provider_url_accepts`]); the machine template the CLI prints gives a
//! `.tar.zst` a URL ending in `#.tar` instead, which CAPH takes.

use std::fmt;

use caph_core::Arch;

use crate::pack::Compression;

/// The distribution keywords in installimage's detection order (Debian is the fallback).
pub const DISTRO_KEYWORDS: &[&str] = &["suse", "centos", "ubuntu", "arch", "rocky", "alma", "rhel"];

/// Extensions installimage accepts for `IMAGE`.
pub const INSTALLIMAGE_EXTENSIONS: &[&str] = &[
    "tar", "tar.gz", "tar.bz", "tar.bz2", "tar.xz", "tar.zst", "tgz", "tbz", "txz",
];

/// Extensions Cluster API Provider Hetzner accepts in an image URL (no `tar.zst`).
pub const PROVIDER_URL_EXTENSIONS: &[&str] = &[
    "tar", "tar.gz", "tar.bz", "tar.bz2", "tar.xz", "tgz", "tbz", "txz",
];

/// The distributions this project builds images of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distro {
    /// Debian; installimage's fallback when no other keyword is in the name.
    Debian,
    /// Ubuntu.
    Ubuntu,
}

impl Distro {
    /// The name's first field: `Debian` or `Ubuntu`, capitalised as Hetzner's images are.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Distro::Debian => "Debian",
            Distro::Ubuntu => "Ubuntu",
        }
    }

    /// installimage's name for it (its `IAM` variable): `debian` or `ubuntu`.
    pub fn installimage_name(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Ubuntu => "ubuntu",
        }
    }
}

impl fmt::Display for Distro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_prefix())
    }
}

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The version is not four digits.
    #[error(
        "version {0:?} must be four digits, as installimage compares it numerically \
         (Ubuntu 24.04 is `2404`, Debian 12 is `1200`)"
    )]
    Version(String),
    /// The codename is not lowercase letters.
    #[error("codename {0:?} must be lowercase letters, like `noble` or `bookworm`")]
    Codename(String),
    /// The flavor has characters outside `[A-Za-z0-9._-]` or starts or ends badly.
    #[error(
        "flavor {0:?} must be letters, digits, `.`, `_` and `-`, starting and ending with a \
         letter or digit"
    )]
    FlavorCharacters(String),
    /// A field of the name contains a distribution keyword that would change installimage's
    /// detection.
    #[error(
        "{field} {value:?} contains {keyword:?}: installimage would take the image for \
         {keyword} (it detects the distribution from any part of the file name)"
    )]
    DistroKeyword {
        /// `codename` or `flavor`.
        field: &'static str,
        /// The value.
        value: String,
        /// The keyword found.
        keyword: &'static str,
    },
    /// A `-`-separated field of the flavor looks like an architecture to installimage.
    #[error(
        "flavor {flavor:?} has a field {field:?} that installimage would read as an architecture"
    )]
    ArchField {
        /// The flavor.
        flavor: String,
        /// The offending field.
        field: String,
    },
    /// A file name that does not follow the rule.
    #[error(
        "{name:?} does not follow `<Distro>-<NNNN>-<codename>-<amd64|arm64>-<flavor>.<ext>`: {reason}"
    )]
    Malformed {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A validated installimage image name, without extension.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    distro: Distro,
    version: String,
    codename: String,
    arch: Arch,
    flavor: String,
}

impl ImageName {
    /// Builds and validates a name, e.g. `(Ubuntu, "2404", "noble", X86, "k8s-v1.31.2")`.
    pub fn new(
        distro: Distro,
        version: &str,
        codename: &str,
        arch: Arch,
        flavor: &str,
    ) -> Result<ImageName, NameError> {
        if version.len() != 4 || !version.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(NameError::Version(version.to_owned()));
        }
        if codename.is_empty() || !codename.bytes().all(|byte| byte.is_ascii_lowercase()) {
            return Err(NameError::Codename(codename.to_owned()));
        }
        let edge_ok = |byte: Option<u8>| byte.is_some_and(|byte| byte.is_ascii_alphanumeric());
        if !flavor
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
            || !edge_ok(flavor.bytes().next())
            || !edge_ok(flavor.bytes().last())
        {
            return Err(NameError::FlavorCharacters(flavor.to_owned()));
        }
        // Any keyword in a free-form field is refused, even one that would lose to the
        // distribution's own keyword in installimage's order: the name must not depend on it.
        for (field, value) in [("codename", codename), ("flavor", flavor)] {
            let lower = value.to_ascii_lowercase();
            let keywords = DISTRO_KEYWORDS.iter().chain(&["debian"]);
            if let Some(keyword) = keywords
                .into_iter()
                .find(|keyword| lower.contains(*keyword))
            {
                return Err(NameError::DistroKeyword {
                    field,
                    value: value.to_owned(),
                    keyword,
                });
            }
        }
        if let Some(field) = flavor.split('-').find(|field| {
            ["32", "64", "i386", "amd64", "arm64"].contains(&field.to_ascii_lowercase().as_str())
        }) {
            return Err(NameError::ArchField {
                flavor: flavor.to_owned(),
                field: field.to_owned(),
            });
        }
        let name = ImageName {
            distro,
            version: version.to_owned(),
            codename: codename.to_owned(),
            arch,
            flavor: flavor.to_owned(),
        };
        // The checks above guarantee this; checked anyway, since a wrong guess means a failed
        // install on a real server.
        let rendered = name.to_string();
        if installimage_distro(&rendered) != distro.installimage_name() {
            return Err(NameError::Malformed {
                name: rendered.clone(),
                reason: format!(
                    "installimage would read the distribution as {}",
                    installimage_distro(&rendered)
                ),
            });
        }
        Ok(name)
    }

    /// Parses a file name such as `Debian-1200-bookworm-arm64-k8s-v1.31.2.tar.gz` into the name
    /// and its compression (`.tar`, `.tar.gz` or `.tar.zst`).
    pub fn parse(file_name: &str) -> Result<(ImageName, Compression), NameError> {
        let malformed = |reason: &str| NameError::Malformed {
            name: file_name.to_owned(),
            reason: reason.to_owned(),
        };
        let (stem, compression) = if let Some(stem) = file_name.strip_suffix(".tar.gz") {
            (stem, Compression::gzip())
        } else if let Some(stem) = file_name.strip_suffix(".tar.zst") {
            (stem, Compression::zstd())
        } else if let Some(stem) = file_name.strip_suffix(".tar") {
            (stem, Compression::None)
        } else {
            return Err(malformed("the extension must be .tar.gz, .tar.zst or .tar"));
        };
        let mut fields = stem.splitn(5, '-');
        let (Some(distro), Some(version), Some(codename), Some(arch), Some(flavor)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(malformed("it needs five `-`-separated fields"));
        };
        let distro = match distro {
            "Debian" => Distro::Debian,
            "Ubuntu" => Distro::Ubuntu,
            _ => return Err(malformed("the distribution must be `Debian` or `Ubuntu`")),
        };
        let arch = match arch {
            "amd64" => Arch::X86,
            "arm64" => Arch::Arm,
            _ => return Err(malformed("the architecture must be `amd64` or `arm64`")),
        };
        let name = ImageName::new(distro, version, codename, arch, flavor)?;
        Ok((name, compression))
    }

    /// The distribution.
    pub fn distro(&self) -> Distro {
        self.distro
    }

    /// The four-digit version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The codename.
    pub fn codename(&self) -> &str {
        &self.codename
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The flavor.
    pub fn flavor(&self) -> &str {
        &self.flavor
    }

    /// The file name with the extension of `compression`.
    pub fn file_name(&self, compression: Compression) -> String {
        format!("{self}.{}", compression.extension())
    }
}

impl fmt::Display for ImageName {
    /// The name without extension.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}-{}",
            self.distro.file_prefix(),
            self.version,
            self.codename,
            self.arch.debian_name(),
            self.flavor
        )
    }
}

/// The distribution installimage reads from a file name (its `IAM`): the first keyword of
/// [`DISTRO_KEYWORDS`] found in the lower-cased name, else `debian`.
pub fn installimage_distro(file_name: &str) -> &'static str {
    let lower = file_name.to_ascii_lowercase();
    DISTRO_KEYWORDS
        .iter()
        .find(|keyword| lower.contains(*keyword))
        .copied()
        .unwrap_or("debian")
}

/// Whether installimage accepts the file name's extension for `IMAGE`.
pub fn installimage_accepts(file_name: &str) -> bool {
    INSTALLIMAGE_EXTENSIONS
        .iter()
        .any(|extension| has_extension(file_name, extension))
}

/// Whether Cluster API Provider Hetzner accepts the file name's extension in
/// `installImage.image.url` as it is (it does not take `tar.zst`).
pub fn provider_url_accepts(file_name: &str) -> bool {
    PROVIDER_URL_EXTENSIONS
        .iter()
        .any(|extension| has_extension(file_name, extension))
}

fn has_extension(file_name: &str, extension: &str) -> bool {
    file_name
        .strip_suffix(extension)
        .is_some_and(|stem| stem.len() > 1 && stem.ends_with('.'))
}
