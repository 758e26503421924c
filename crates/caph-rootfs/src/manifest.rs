//! The JSON manifest written next to a tarball: what was built from which spec, with which
//! versions and packages, and what the archive holds.
//!
//! The caller supplies what only it knows ([`ManifestInput`]: spec name and digest, component
//! versions, the package list); [`Manifest::new`] adds the archive's facts from the
//! [`PackSummary`]. With `SOURCE_DATE_EPOCH` as the build time the manifest is as reproducible
//! as the tarball.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::pack::{Compression, EntryCounts, PackError, PackSummary};

/// The manifest format version; bumped on incompatible changes.
pub const MANIFEST_VERSION: u32 = 1;

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// The package name, e.g. `containerd`.
    pub name: String,
    /// The installed version, e.g. `1.7.24-1`.
    pub version: String,
    /// The package architecture (`amd64`, `arm64`, `all`), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// The spec an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRef {
    /// The spec's name.
    pub name: String,
    /// A digest of the spec (e.g. `sha256:<hex>`).
    pub digest: String,
}

/// What the caller knows and the writer does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    /// The spec's name.
    pub spec_name: String,
    /// A digest of the spec.
    pub spec_digest: String,
    /// Component versions, e.g. `kubernetes` → `v1.31.2`; sorted by name in the output.
    pub versions: BTreeMap<String, String>,
    /// Installed packages.
    pub packages: Vec<Package>,
}

/// The tarball the manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarballRef {
    /// Its file name (no directory).
    pub file_name: String,
    /// Its compression.
    pub compression: Compression,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// Size of the uncompressed tar stream in bytes.
    pub uncompressed_size: u64,
}

/// The manifest, as written to `<tarball>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub manifest_version: u32,
    /// The spec built.
    pub spec: SpecRef,
    /// Component versions.
    pub versions: BTreeMap<String, String>,
    /// Installed packages, sorted by name.
    pub packages: Vec<Package>,
    /// The tarball.
    pub tarball: TarballRef,
    /// Entries in the archive (files, directories, links, devices, fifos).
    pub file_count: u64,
    /// Entries by kind.
    pub entries: EntryCounts,
    /// Sum of the regular files' sizes in bytes, each inode once.
    pub total_size: u64,
    /// Build time, RFC 3339 in UTC (`SOURCE_DATE_EPOCH` when set).
    pub build_time: String,
    /// Build time in seconds since the epoch.
    pub build_time_unix: i64,
}

impl Manifest {
    /// Combines the caller's facts with the archive's. `build_time_unix` is seconds since the
    /// epoch; see [`build_time`].
    pub fn new(
        input: ManifestInput,
        tarball_file_name: &str,
        summary: &PackSummary,
        build_time_unix: i64,
    ) -> Manifest {
        let mut packages = input.packages;
        packages.sort();
        Manifest {
            manifest_version: MANIFEST_VERSION,
            spec: SpecRef {
                name: input.spec_name,
                digest: input.spec_digest,
            },
            versions: input.versions,
            packages,
            tarball: TarballRef {
                file_name: tarball_file_name.to_owned(),
                compression: summary.compression,
                sha256: summary.sha256.clone(),
                size: summary.bytes_out,
                uncompressed_size: summary.bytes_in,
            },
            file_count: summary.entries.total(),
            entries: summary.entries,
            total_size: summary.file_bytes,
            build_time: caph_core::time::rfc3339_utc(build_time_unix),
            build_time_unix,
        }
    }

    /// Pretty-printed JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and maps with string keys cannot fail.
        let mut json = serde_json::to_string_pretty(self).unwrap_or_default();
        json.push('\n');
        json
    }
}

/// `SOURCE_DATE_EPOCH` when given (reproducible builds), else the current time.
pub fn build_time(source_date_epoch: Option<i64>) -> i64 {
    source_date_epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            })
    })
}

/// Where the manifest of `tarball` goes: `<tarball>.manifest.json`.
pub fn manifest_path(tarball: &Path) -> PathBuf {
    let mut name = tarball.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// Writes `manifest` to [`manifest_path`]`(tarball)` atomically; returns that path.
pub fn write_manifest(tarball: &Path, manifest: &Manifest) -> Result<PathBuf, PackError> {
    let path = manifest_path(tarball);
    crate::pack::write_file_atomically(&path, manifest.to_json().as_bytes())?;
    Ok(path)
}
