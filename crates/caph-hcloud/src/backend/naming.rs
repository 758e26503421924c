//! Names and labels of what a build creates: temporary resources carry the build label, snapshots
//! carry the name CAPH looks up plus provenance.

use caph_core::{Arch, ImageSpec};

use crate::client::Labels;

/// The label on every temporary resource of a build (server, SSH key, unfinished snapshot):
/// `caph-image gc` finds what a killed run left by it.
pub const BUILD_LABEL: &str = "caph-image-build";
/// The label Cluster API Provider Hetzner looks images up by.
pub const NAME_LABEL: &str = "caph-image-name";
/// The label that holds the image name while a snapshot is being made. The snapshot only gets
/// [`NAME_LABEL`] once it is available (and, with `--replace`, the old one is gone), so CAPH never
/// sees two images of one name, nor one that is still being made.
pub const PENDING_NAME_LABEL: &str = "caph-image-pending-name";
/// Marks snapshots made by this tool.
pub const BUILT_BY_LABEL: &str = "built-by";
/// The value of [`BUILT_BY_LABEL`].
pub const BUILT_BY: &str = "caph-image";

/// A fresh build id: UTC time and a random suffix, lower-case so it fits server names and label values.
pub fn new_build_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // 2026-11-21T05:30:00Z -> 20261121t053000: lower-case digits fit names and label values.
    let stamp: String = rfc3339(now).chars().filter(char::is_ascii_digit).collect();
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{}t{}-{suffix:06x}", &stamp[..8], &stamp[8..])
}

/// The temporary server's and key's name for one architecture of a build.
pub fn temporary_name(build_id: &str, arch: Arch) -> String {
    format!("caph-image-{build_id}-{arch}")
}

/// Labels of the temporary server and key.
pub fn temporary_labels(build_id: &str) -> Labels {
    Labels::from([(BUILD_LABEL.to_string(), build_id.to_string())])
}

/// Where a snapshot was built: its server type and location, recorded on the snapshot as
/// `build-server-type` and `build-location` (snapshots are global, but the build's location
/// decides its time and cost, and the type its disk size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltOn {
    /// The build server's type, e.g. `cx23`.
    pub server_type: String,
    /// The build server's location, e.g. `fsn1`.
    pub location: String,
}

/// Labels of a snapshot while it is made: provenance, the pending name and the build label.
pub fn pending_snapshot_labels(
    spec: &ImageSpec,
    arch: Arch,
    build_id: &str,
    built_on: &BuiltOn,
) -> Labels {
    let mut labels = final_snapshot_labels(spec, arch, build_id, built_on);
    labels.remove(NAME_LABEL);
    labels.insert(PENDING_NAME_LABEL.to_string(), spec.image.name.clone());
    labels.insert(BUILD_LABEL.to_string(), build_id.to_string());
    labels
}

/// Labels of a finished snapshot: the name CAPH looks up, provenance, and the spec's own labels.
pub fn final_snapshot_labels(
    spec: &ImageSpec,
    arch: Arch,
    build_id: &str,
    built_on: &BuiltOn,
) -> Labels {
    let mut labels: Labels = spec.image.labels.clone();
    labels.insert(NAME_LABEL.to_string(), spec.image.name.clone());
    labels.insert(
        "kubernetes-version".to_string(),
        spec.kubernetes.version.to_string(),
    );
    labels.insert(
        "containerd-version".to_string(),
        spec.containerd.version.to_string(),
    );
    labels.insert("os".to_string(), spec.base.distribution.name().to_string());
    labels.insert("os-version".to_string(), spec.base.version.clone());
    labels.insert("architecture".to_string(), arch.hcloud_name().to_string());
    labels.insert("build-id".to_string(), build_id.to_string());
    labels.insert(BUILT_BY_LABEL.to_string(), BUILT_BY.to_string());
    labels.insert("spec-sha256".to_string(), spec.short_digest().to_string());
    labels.insert(
        "build-server-type".to_string(),
        built_on.server_type.clone(),
    );
    labels.insert("build-location".to_string(), built_on.location.clone());
    labels
}

/// The snapshot description.
pub fn snapshot_description(spec: &ImageSpec, arch: Arch) -> String {
    match &spec.image.description {
        Some(description) => format!("{description} ({arch})"),
        None => format!("{} ({arch}), built by caph-image", spec.image.name),
    }
}

/// RFC 3339 UTC time of a Unix timestamp.
pub fn rfc3339(seconds: u64) -> String {
    caph_core::time::rfc3339_utc(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// Parses the RFC 3339 times the API returns to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    caph_core::time::parse_rfc3339(text).and_then(|seconds| u64::try_from(seconds).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_152_000), "2026-11-20T05:20:00Z");
        assert_eq!(parse_rfc3339("2026-11-20T05:20:00Z"), Some(1_795_152_000));
        assert_eq!(
            parse_rfc3339("2026-11-20T06:20:00+01:00"),
            Some(1_795_152_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-20T05:20:00.123+00:00"),
            Some(1_795_152_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn build_ids_are_valid_label_values_and_hostnames() {
        let id = new_build_id();
        assert!(caph_core::label::check_value(&id).is_ok(), "{id}");
        let name = temporary_name(&id, Arch::Arm);
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
    }
}
