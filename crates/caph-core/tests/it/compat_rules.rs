//! The compatibility rules, one test per rule, each named after the upstream source it follows
//! (the diagnostic names the source too).

use caph_core::releases::Date;
use expect_test::{Expect, expect};

use crate::MapFiles;

/// A valid spec: Kubernetes 1.36 from release binaries with its supported companions.
const SPEC: &str = r#"[image]
name = "compat"

[base]
distribution = "debian"
version = "13"

[kubernetes]
version = "1.36.4"
source = "binaries"

[containerd]
version = "2.3.4"

[runc]
version = "1.4.3"

[crictl]
version = "1.36.0"

[cni]
version = "1.9.1"
"#;

/// The day the rules are judged on, for the end-of-life ones.
const TODAY: Date = Date::new(2026, 12, 6);

fn check(spec: &str, expect: Expect) {
    let actual =
        match caph_core::spec::load_as_of("c.toml", spec.as_bytes(), &MapFiles::default(), TODAY) {
            Ok(spec) if spec.warnings.is_empty() => "ok".to_string(),
            Ok(spec) => spec
                .warnings
                .iter()
                .map(|warning| format!("warning: {warning}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(diagnostics) => diagnostics.to_string(),
        };
    expect.assert_eq(&actual);
}

fn with(pairs: &[(&str, &str)]) -> String {
    let mut spec = SPEC.to_string();
    for (from, to) in pairs {
        assert!(spec.contains(from), "{from:?}");
        spec = spec.replacen(from, to, 1);
    }
    spec
}

#[test]
fn the_base_spec_passes_every_rule() {
    check(SPEC, expect!["ok"]);
}

#[test]
fn containerd_1_with_kubernetes_after_1_35_per_kubernetes_1_35_release_notes() {
    check(
        &with(&[("version = \"2.3.4\"", "version = \"1.7.28\"")]),
        expect![[
            r#"c.toml:13:11: containerd.version containerd 1.7.28 does not support Kubernetes 1.36.4: Kubernetes 1.35 is the last release that supports containerd 1.x (source: the Kubernetes v1.35 release notes: the last release that supports containerd 1.x); use containerd 2.3.0+, 2.2.0+"#
        ]],
    );
}

#[test]
fn containerd_minor_outside_the_support_table_per_containerd_releases_md() {
    check(
        &with(&[("version = \"2.3.4\"", "version = \"2.1.9\"")]),
        expect![[
            r#"c.toml:13:11: containerd.version containerd 2.1.9 is not supported with Kubernetes 1.36.4, which goes with containerd 2.3.0+, 2.2.0+ (source: containerd's RELEASES.md, "Kubernetes Support" table); use containerd 2.3.0+, 2.2.0+"#
        ]],
    );
}

#[test]
fn containerd_patch_below_the_supported_one_per_containerd_releases_md() {
    check(
        &with(&[
            ("version = \"1.36.4\"", "version = \"1.35.8\""),
            ("version = \"1.36.0\"", "version = \"1.35.0\""),
            ("version = \"2.3.4\"", "version = \"2.1.4\""),
        ]),
        expect![[r#"
            c.toml:13:11: containerd.version containerd 2.1.4 is older than 2.1.5, the first 2.1 release supported with Kubernetes 1.35.8 (source: containerd's RELEASES.md, "Kubernetes Support" table); use containerd 2.1.5 or newer"#]],
    );
}

#[test]
fn crictl_minor_must_be_the_kubernetes_minor_per_cri_tools_readme() {
    check(
        &with(&[("version = \"1.36.0\"", "version = \"1.35.0\"")]),
        expect![[
            r#"c.toml:19:11: crictl.version crictl 1.35.0 does not match Kubernetes 1.36.4: the minor releases must be the same (source: cri-tools' README, "Compatibility matrix": each crictl minor release goes with the same Kubernetes minor release); use crictl 1.36.x, for example "1.36.0""#
        ]],
    );
}

#[test]
fn runc_before_the_november_2025_escape_fixes_per_runc_security_advisories() {
    check(
        &with(&[("version = \"1.4.3\"", "version = \"1.3.2\"")]),
        expect![[
            r#"c.toml:16:11: runc.version runc 1.3.2 lets a container escape (CVE-2025-31133, CVE-2025-52565, CVE-2025-52881); the first fixed release of its line is 1.3.3 (source: runc's security advisories for CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (November 2025): fixed in 1.2.8, 1.3.3 and 1.4.0); use runc 1.3.3 or newer"#
        ]],
    );
    check(
        &with(&[("version = \"1.4.3\"", "version = \"1.1.15\"")]),
        expect![[
            r#"c.toml:16:11: runc.version runc 1.1.15 lets a container escape (CVE-2025-31133, CVE-2025-52565, CVE-2025-52881); the first fixed release of its line is 1.2.8 (source: runc's security advisories for CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (November 2025): fixed in 1.2.8, 1.3.3 and 1.4.0); use runc 1.2.8 or newer"#
        ]],
    );
}

#[test]
fn kubernetes_past_its_end_of_life_is_a_warning_per_kubernetes_io_releases() {
    check(
        &with(&[
            ("version = \"1.36.4\"", "version = \"1.34.2\""),
            ("version = \"1.36.0\"", "version = \"1.34.0\""),
            ("version = \"2.3.4\"", "version = \"2.0.6\""),
        ]),
        expect![
            "warning: c.toml:9:11: kubernetes.version Kubernetes 1.34 reached its end of life on 2026-10-27: no more fixes, security ones included (source: kubernetes.io/releases (endOfLifeDate in kubernetes/website data/releases/schedule.yaml)); move to a Kubernetes release that is still supported"
        ],
    );
}

#[test]
fn containerd_past_its_end_of_life_is_a_warning_per_containerd_releases_md() {
    check(
        &with(&[("version = \"2.3.4\"", "version = \"2.2.5\"")]),
        expect![[
            r#"warning: c.toml:13:11: containerd.version containerd 2.2 reached its end of life on 2026-11-06: no more fixes, security ones included (source: containerd's RELEASES.md, "Current State of containerd Releases" (End of Life column; a month alone is read as its last day)); move to a containerd release that is still supported"#
        ]],
    );
}

#[test]
fn unknown_pause_version_per_kubeadm_constants() {
    check(
        &with(&[
            ("version = \"1.36.4\"", "version = \"1.37.0\""),
            ("version = \"1.36.0\"", "version = \"1.37.0\""),
        ]),
        expect![[
            r#"c.toml:9:11: kubernetes.version 1.37.0: no pause image is known for Kubernetes 1.37 (source: kubeadm's PauseVersion for each release (cmd/kubeadm/app/constants/constants.go), as kubespray lists it in pod_infra_supported_versions); add `sandbox_image = "registry.k8s.io/pause:<tag>"` to [containerd], with the tag `kubeadm config images list` shows"#
        ]],
    );
    // With the image given, the spec loads; the unknown pairing is then a warning.
    check(
        &with(&[
            ("version = \"1.36.4\"", "version = \"1.37.0\""),
            ("version = \"1.36.0\"", "version = \"1.37.0\""),
            (
                "[containerd]\n",
                "[containerd]\nsandbox_image = \"registry.k8s.io/pause:3.11\"\n",
            ),
        ]),
        expect![[
            r#"warning: c.toml:14:11: containerd.version no containerd support data for Kubernetes 1.37: the pair with containerd 2.3.4 is unchecked (source: containerd's RELEASES.md, "Kubernetes Support" table); check containerd's RELEASES.md and add the row to caph-core's releases table"#
        ]],
    );
}

#[test]
fn cni_plugins_are_required_with_binaries_and_refused_with_apt() {
    check(
        &SPEC.replace("\n[cni]\nversion = \"1.9.1\"\n", ""),
        expect![[
            r#"c.toml:8:1: cni is missing: Kubernetes from release binaries needs the CNI plugins in /opt/cni/bin; add `[cni]` with `version = "1.9.1"` (and its sha256 pins)"#
        ]],
    );
    check(
        &with(&[("source = \"binaries\"", "source = \"apt\"")]),
        expect![[
            r#"c.toml:21:1: cni only applies to kubernetes.source = "binaries": the apt packages bring the CNI plugins (kubernetes-cni); remove [cni], or set source = "binaries" in [kubernetes]"#
        ]],
    );
}

#[test]
fn a_spec_without_base_rootfs_builds_from_its_codename() {
    let spec = caph_core::spec::load("c.toml", SPEC.as_bytes(), &MapFiles::default()).unwrap();
    assert_eq!(
        spec.base.rootfs,
        Some(caph_core::spec::RootfsBase::Mmdebstrap {
            suite: "trixie".to_string(),
            mirror: None,
            variant: "minbase".to_string(),
            components: vec!["main".to_string()],
        })
    );
}
