//! Facts about upstream releases that the plan and validation rely on, each table with its source:
//! the pause image kubeadm expects, which containerd releases a Kubernetes release supports, the
//! runc releases that fix the November 2025 container escapes, and end-of-life dates.
//!
//! These are data, not code taken from anywhere: when upstream publishes a new release, add a row
//! here (and `cargo xtask pins` updates the shipped specs' digests).

use std::fmt;

use crate::version::Version;

/// A calendar day (UTC), for end-of-life dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
}

impl Date {
    /// A date from its parts; the tables below are written with it.
    pub const fn new(year: i32, month: u32, day: u32) -> Date {
        Date { year, month, day }
    }

    /// The UTC day that `unix` seconds fall on (the caller reads the clock; this crate does not).
    pub fn from_unix(unix: i64) -> Date {
        let (year, month, day) = crate::time::civil_from_days(unix.div_euclid(86_400));
        Date {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month,
            day,
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Where [`PAUSE_VERSIONS`] comes from.
pub const PAUSE_SOURCE: &str = "kubeadm's PauseVersion for each release (cmd/kubeadm/app/constants/constants.go), as kubespray lists it in pod_infra_supported_versions";
/// The registry kubeadm pulls the pause image from by default.
pub const PAUSE_REPOSITORY: &str = "registry.k8s.io/pause";
/// The pause image tag kubeadm uses, per Kubernetes minor release (`kubeadm config images list`).
pub const PAUSE_VERSIONS: &[((u32, u32), &str)] = &[
    ((1, 28), "3.9"),
    ((1, 29), "3.9"),
    ((1, 30), "3.9"),
    ((1, 31), "3.10"),
    ((1, 32), "3.10"),
    ((1, 33), "3.10"),
    ((1, 34), "3.10.1"),
    ((1, 35), "3.10.1"),
    ((1, 36), "3.10.2"),
];

/// The pause image kubeadm expects for `kubernetes`, when the table knows its minor release.
pub fn pause_image(kubernetes: Version) -> Option<String> {
    PAUSE_VERSIONS
        .iter()
        .find(|(minor, _)| *minor == (kubernetes.major, kubernetes.minor))
        .map(|(_, tag)| format!("{PAUSE_REPOSITORY}:{tag}"))
}

/// Where [`CONTAINERD_FOR_KUBERNETES`] comes from.
pub const CONTAINERD_SUPPORT_SOURCE: &str =
    "containerd's RELEASES.md, \"Kubernetes Support\" table";
/// For each Kubernetes minor release, the oldest patch of each containerd minor release that
/// containerd recommends with it; a containerd minor not listed is not supported with it.
pub const CONTAINERD_FOR_KUBERNETES: &[((u32, u32), &[Version])] = &[
    ((1, 32), &[v(2, 1, 0), v(2, 0, 1), v(1, 7, 24), v(1, 6, 36)]),
    ((1, 33), &[v(2, 1, 0), v(2, 0, 4), v(1, 7, 24), v(1, 6, 36)]),
    ((1, 34), &[v(2, 1, 3), v(2, 0, 6), v(1, 7, 28), v(1, 6, 39)]),
    ((1, 35), &[v(2, 2, 0), v(2, 1, 5), v(1, 7, 28)]),
    ((1, 36), &[v(2, 3, 0), v(2, 2, 0)]),
];

/// Where [`LAST_KUBERNETES_WITH_CONTAINERD_1`] comes from.
pub const CONTAINERD_1_SOURCE: &str =
    "the Kubernetes v1.35 release notes: the last release that supports containerd 1.x";
/// The last Kubernetes minor release that supports containerd 1.x; newer ones need containerd 2.
pub const LAST_KUBERNETES_WITH_CONTAINERD_1: (u32, u32) = (1, 35);

/// Where the crictl rule comes from.
pub const CRICTL_SOURCE: &str = "cri-tools' README, \"Compatibility matrix\": each crictl minor release goes with the same Kubernetes minor release";

/// Where [`RUNC_FIXED_RELEASES`] comes from.
pub const RUNC_CVE_SOURCE: &str = "runc's security advisories for CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (November 2025): fixed in 1.2.8, 1.3.3 and 1.4.0";
/// The CVEs of November 2025 that let a container escape through runc's mount handling.
pub const RUNC_CVES: &str = "CVE-2025-31133, CVE-2025-52565, CVE-2025-52881";
/// For each runc minor release that got the fix, its first fixed patch; runc minors older than
/// the oldest listed never got it, newer ones all have it.
pub const RUNC_FIXED_RELEASES: &[Version] = &[v(1, 2, 8), v(1, 3, 3), v(1, 4, 0)];

/// The first runc release at or above `runc` in `runc`'s minor line that has the fix, or `None`
/// when `runc` already has it.
pub fn runc_fix_needed(runc: Version) -> Option<Version> {
    let oldest = RUNC_FIXED_RELEASES[0];
    let newest = RUNC_FIXED_RELEASES[RUNC_FIXED_RELEASES.len() - 1];
    if (runc.major, runc.minor) > (newest.major, newest.minor) {
        return None;
    }
    if (runc.major, runc.minor) < (oldest.major, oldest.minor) {
        return Some(oldest);
    }
    let fixed = RUNC_FIXED_RELEASES
        .iter()
        .find(|fixed| (fixed.major, fixed.minor) == (runc.major, runc.minor))
        .copied()?;
    (runc < fixed).then_some(fixed)
}

/// Where [`KUBERNETES_END_OF_LIFE`] comes from.
pub const KUBERNETES_EOL_SOURCE: &str =
    "kubernetes.io/releases (endOfLifeDate in kubernetes/website data/releases/schedule.yaml)";
/// The day each Kubernetes minor release stops getting patches.
pub const KUBERNETES_END_OF_LIFE: &[((u32, u32), Date)] = &[
    ((1, 28), Date::new(2024, 10, 28)),
    ((1, 29), Date::new(2025, 2, 28)),
    ((1, 30), Date::new(2025, 6, 28)),
    ((1, 31), Date::new(2025, 10, 28)),
    ((1, 32), Date::new(2026, 2, 28)),
    ((1, 33), Date::new(2026, 6, 28)),
    ((1, 34), Date::new(2026, 10, 27)),
    ((1, 35), Date::new(2027, 2, 28)),
    ((1, 36), Date::new(2027, 6, 28)),
];

/// Where [`CONTAINERD_END_OF_LIFE`] comes from.
pub const CONTAINERD_EOL_SOURCE: &str = "containerd's RELEASES.md, \"Current State of containerd Releases\" (End of Life column; a month alone is read as its last day)";
/// The day each containerd minor release stops getting patches (extended and LTS support included).
pub const CONTAINERD_END_OF_LIFE: &[((u32, u32), Date)] = &[
    ((1, 6), Date::new(2025, 8, 23)),
    ((1, 7), Date::new(2026, 9, 30)),
    ((2, 0), Date::new(2027, 3, 31)),
    ((2, 1), Date::new(2026, 7, 3)),
    ((2, 2), Date::new(2026, 11, 6)),
    ((2, 3), Date::new(2028, 4, 30)),
];

/// The end-of-life date of `version`'s minor release in `table`.
pub fn end_of_life(table: &[((u32, u32), Date)], version: Version) -> Option<Date> {
    table
        .iter()
        .find(|(minor, _)| *minor == (version.major, version.minor))
        .map(|(_, date)| *date)
}

const fn v(major: u32, minor: u32, patch: u32) -> Version {
    Version {
        major,
        minor,
        patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(Date::from_unix(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_unix(1_796_515_200).to_string(), "2026-12-06");
    }

    #[test]
    fn runc_fix_by_minor_line() {
        let parse = |text| Version::parse(text).unwrap();
        assert_eq!(runc_fix_needed(parse("1.1.15")), Some(parse("1.2.8")));
        assert_eq!(runc_fix_needed(parse("1.2.7")), Some(parse("1.2.8")));
        assert_eq!(runc_fix_needed(parse("1.2.8")), None);
        assert_eq!(runc_fix_needed(parse("1.3.2")), Some(parse("1.3.3")));
        assert_eq!(runc_fix_needed(parse("1.3.6")), None);
        assert_eq!(runc_fix_needed(parse("1.4.0")), None);
        assert_eq!(runc_fix_needed(parse("1.5.1")), None);
    }

    #[test]
    fn tables_are_sorted_and_have_no_duplicates() {
        for pair in PAUSE_VERSIONS.windows(2) {
            assert!(pair[0].0 < pair[1].0);
        }
        for pair in CONTAINERD_FOR_KUBERNETES.windows(2) {
            assert!(pair[0].0 < pair[1].0);
        }
        for pair in KUBERNETES_END_OF_LIFE.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1);
        }
    }
}
