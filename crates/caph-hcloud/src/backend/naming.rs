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
    let (year, month, day, hour, minute, second) = civil_from_unix(now);
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{year:04}{month:02}{day:02}t{hour:02}{minute:02}{second:02}-{suffix:06x}")
}

/// The temporary server's and key's name for one architecture of a build.
pub fn temporary_name(build_id: &str, arch: Arch) -> String {
    format!("caph-image-{build_id}-{arch}")
}

/// Labels of the temporary server and key.
pub fn temporary_labels(build_id: &str) -> Labels {
    Labels::from([(BUILD_LABEL.to_string(), build_id.to_string())])
}

/// Labels of a snapshot while it is made: provenance, the pending name and the build label.
pub fn pending_snapshot_labels(spec: &ImageSpec, arch: Arch, build_id: &str) -> Labels {
    let mut labels = final_snapshot_labels(spec, arch, build_id);
    labels.remove(NAME_LABEL);
    labels.insert(PENDING_NAME_LABEL.to_string(), spec.image.name.clone());
    labels.insert(BUILD_LABEL.to_string(), build_id.to_string());
    labels
}

/// Labels of a finished snapshot: the name CAPH looks up, provenance, and the spec's own labels.
pub fn final_snapshot_labels(spec: &ImageSpec, arch: Arch, build_id: &str) -> Labels {
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
    labels
}

/// The snapshot description.
pub fn snapshot_description(spec: &ImageSpec, arch: Arch) -> String {
    match &spec.image.description {
        Some(description) => format!("{description} ({arch})"),
        None => format!("{} ({arch}), built by caph-image", spec.image.name),
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm), to avoid a date dependency.
fn civil_from_unix(seconds: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
    (year, month, day, rest / 3600, rest % 3600 / 60, rest % 60)
}

/// RFC 3339 UTC time of a Unix timestamp.
pub fn rfc3339(seconds: u64) -> String {
    let (year, month, day, hour, minute, second) = civil_from_unix(seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Parses the RFC 3339 times the API returns (`2026-11-21T05:30:00+00:00`, fractions allowed) to Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else {
        let split = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(split);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut parts = offset[1..].split(':').map(|part| part.parse::<i64>().ok());
        let hours = parts.next()??;
        let minutes = parts.next().flatten().unwrap_or(0);
        (clock, sign * (hours * 3600 + minutes * 60))
    };
    let clock = clock.split('.').next()?;
    let mut clock_parts = clock.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (
        clock_parts.next()??,
        clock_parts.next()??,
        clock_parts.next()??,
    );
    // Days from civil (inverse of the above).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    u64::try_from(seconds).ok()
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
