//! Broken specs, each with the exact diagnostics it must produce.

use expect_test::{Expect, expect};

use crate::MapFiles;

pub(crate) const VALID: &str = r#"[image]
name = "test-image"

[base]
distribution = "debian"
version = "12"

[base.hcloud]
x86 = "debian-12"

[kubernetes]
version = "1.34.2"

[containerd]
version = "2.1.4"

[runc]
version = "1.3.3"

[crictl]
version = "1.34.0"
"#;

const ROBOT: &str = r#"
[robot]
hostname = "node-{server_number}"

[robot.disk]
drives = ["/dev/sda", "/dev/sdb"]
"#;

fn check(spec: &str, expect: Expect) {
    let mut files = MapFiles::default();
    files
        .0
        .insert("scripts/ok.sh".to_string(), b"echo ok\n".to_vec());
    files
        .0
        .insert("files/motd".to_string(), b"hello\n".to_vec());
    let actual = match caph_core::spec::load("images/x.toml", spec.as_bytes(), &files) {
        Ok(_) => "ok".to_string(),
        Err(diagnostics) => diagnostics.to_string(),
    };
    expect.assert_eq(&actual);
}

/// The valid spec with `text` appended.
fn with(text: &str) -> String {
    format!("{VALID}{text}")
}

/// The valid spec with `from` replaced by `to` (which must occur).
fn replaced(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} is not in the valid spec");
    VALID.replacen(from, to, 1)
}

#[test]
fn the_valid_spec_is_valid() {
    check(VALID, expect!["ok"]);
    check(
        &with(
            "[[system.scripts]]\npath = \"scripts/ok.sh\"\n[[system.files]]\npath = \"/etc/motd\"\nsource = \"files/motd\"\n",
        ),
        expect!["ok"],
    );
}

#[test]
fn syntax_error() {
    check(
        "[image]\nname = test\n",
        expect!["images/x.toml:2:8: TOML syntax error: invalid boolean, expected `true`"],
    );
}

#[test]
fn not_utf8() {
    let mut bytes = VALID.as_bytes().to_vec();
    bytes.splice(8..8, [0xff]);
    let actual = caph_core::spec::load("images/x.toml", &bytes, &MapFiles::default())
        .map(|_| ())
        .map_err(|d| d.to_string());
    assert_eq!(
        actual,
        Err("images/x.toml:2:1: the file is not valid UTF-8; save it as UTF-8".to_string())
    );
}

#[test]
fn unknown_top_level_key_suggests_the_close_one() {
    check(
        &with("[kubernetess]\n"),
        expect!["images/x.toml:22:2: kubernetess is not a known key; did you mean `kubernetes`?"],
    );
}

#[test]
fn unknown_nested_key() {
    check(
        &replaced("version = \"1.34.2\"", "verison = \"1.34.2\""),
        expect![[r#"
        images/x.toml:11:1: kubernetes.version is missing; add `version = "1.36.0"` to [kubernetes]
        images/x.toml:12:1: kubernetes.verison is not a known key; did you mean `version`?"#]],
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_known_ones() {
    check(
        &replaced("[runc]\n", "[runc]\nflavour_text = \"x\"\n"),
        expect![[
            r#"images/x.toml:18:1: runc.flavour_text is not a known key; known keys in [runc]: version, url, sha256"#
        ]],
    );
}

#[test]
fn label_value_with_plus() {
    check(
        &replaced("name = \"test-image\"", "name = \"v1.31.2+k3s\""),
        expect![[
            r#"images/x.toml:2:8: image.name "v1.31.2+k3s" is not a valid label value: '+' is not allowed; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit"#
        ]],
    );
}

#[test]
fn label_value_too_long() {
    let name = "a".repeat(64);
    check(
        &replaced("name = \"test-image\"", &format!("name = \"{name}\"")),
        expect![[
            r#"images/x.toml:2:8: image.name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" is not a valid label value: it is 64 characters long, the limit is 63; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit"#
        ]],
    );
}

#[test]
fn bad_extra_label_key_and_reserved_key() {
    check(
        &replaced(
            "name = \"test-image\"\n",
            "name = \"test-image\"\nlabels = { \"team name\" = \"a\", \"caph-image-name\" = \"b\", ok = \"-bad\" }\n",
        ),
        expect![[r#"
        images/x.toml:3:12: image.labels.team name "team name" is not a valid label key: ' ' is not allowed; use [A-Za-z0-9._-] with an optional example.com/ prefix
        images/x.toml:3:31: image.labels.caph-image-name is set by caph-image itself; choose another key
        images/x.toml:3:61: image.labels.ok "-bad" is not a valid label value: it must start and end with a letter or digit; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit"#]],
    );
}

#[test]
fn version_with_a_v() {
    check(
        &replaced("version = \"1.34.2\"", "version = \"v1.34.2\""),
        expect![[
            r#"images/x.toml:12:11: kubernetes.version "v1.34.2" must not start with 'v'; write "1.34.2""#
        ]],
    );
}

#[test]
fn version_not_exact() {
    check(
        &replaced("version = \"1.34.2\"", "version = \"1.34\""),
        expect![[
            r#"images/x.toml:12:11: kubernetes.version "1.34" is not an exact version of the form MAJOR.MINOR.PATCH; write an exact release such as "1.36.0""#
        ]],
    );
}

#[test]
fn containerd_too_old() {
    check(
        &replaced("version = \"2.1.4\"", "version = \"1.5.9\""),
        expect![[r#"
            images/x.toml:14:1: containerd.version 1.5.9 is not supported; use containerd 1.6, 1.7 or 2.x
            images/x.toml:15:11: containerd.version containerd 1.5.9 is not supported with Kubernetes 1.34.2, which goes with containerd 2.1.3+, 2.0.6+, 1.7.28+, 1.6.39+ (source: containerd's RELEASES.md, "Kubernetes Support" table); use containerd 2.1.3+, 2.0.6+, 1.7.28+, 1.6.39+"#]],
    );
}

#[test]
fn missing_section() {
    check(
        &VALID.replace("[crictl]\nversion = \"1.34.0\"\n", ""),
        expect![[r#"images/x.toml:1:1: crictl is missing; add a [crictl] table"#]],
    );
}

#[test]
fn wrong_type() {
    check(
        &replaced("name = \"test-image\"", "name = 5"),
        expect![[r#"images/x.toml:2:8: image.name must be a string, not an integer"#]],
    );
}

#[test]
fn missing_base_for_a_requested_architecture() {
    check(
        &with(
            "[hcloud]\narchitectures = [\"x86\", \"arm\"]\n[hcloud.server_type]\nx86 = \"cx23\"\narm = \"cax11\"\n",
        ),
        expect![[
            r#"images/x.toml:23:25: hcloud.architectures[1] "arm" is requested, but base.hcloud.arm names no image for it; add `arm = "ubuntu-24.04"` (or the right image) to [base.hcloud], or remove "arm""#
        ]],
    );
}

#[test]
fn missing_server_type_for_a_requested_architecture() {
    check(
        &with("[hcloud]\narchitectures = [\"x86\"]\n"),
        expect![[
            r#"images/x.toml:23:18: hcloud.server_types.x86 is missing for the requested architecture "x86"; add `x86 = ["cx23"]` to [hcloud.server_types]: the smallest type the image will run on first, then any fallbacks"#
        ]],
    );
}

/// The `[hcloud]` of the valid spec with `text` after `architectures = ["x86"]`, loaded.
fn hcloud_of(text: &str) -> caph_core::spec::Hcloud {
    let spec = with(&format!("[hcloud]\narchitectures = [\"x86\"]\n{text}"));
    match caph_core::spec::load("images/x.toml", spec.as_bytes(), &MapFiles::default()) {
        Ok(spec) => spec.hcloud.expect("the spec has [hcloud]"),
        Err(diagnostics) => panic!("{diagnostics}"),
    }
}

#[test]
fn preference_lists_and_the_older_single_keys_load_alike() {
    let old = hcloud_of("location = \"nbg1\"\n[hcloud.server_type]\nx86 = \"cx23\"\n");
    let new = hcloud_of("locations = [\"nbg1\"]\n[hcloud.server_types]\nx86 = [\"cx23\"]\n");
    assert_eq!(old, new);
    assert_eq!(new.locations, ["nbg1"]);
    assert_eq!(new.server_types[&caph_core::Arch::X86], ["cx23"]);

    let ordered = hcloud_of(
        "locations = [\"hel1\", \"fsn1\"]\n[hcloud.server_types]\nx86 = [\"cx23\", \"cx33\"]\n",
    );
    assert_eq!(ordered.locations, ["hel1", "fsn1"]);
    assert_eq!(
        ordered.server_types[&caph_core::Arch::X86],
        ["cx23", "cx33"]
    );

    // One architecture in each form is fine; without a location, the three eu-central sites.
    let mixed = hcloud_of(
        "[hcloud.server_type]\nx86 = \"cx23\"\n[hcloud.server_types]\narm = [\"cax11\"]\n",
    );
    assert_eq!(mixed.locations, caph_core::spec::DEFAULT_LOCATIONS);
    assert_eq!(mixed.server_types[&caph_core::Arch::Arm], ["cax11"]);
}

#[test]
fn preference_lists_that_cannot_be_read() {
    check(
        &with(
            "[hcloud]\narchitectures = [\"x86\"]\nlocation = \"fsn1\"\nlocations = [\"nbg1\"]\n[hcloud.server_type]\nx86 = \"cx23\"\n[hcloud.server_types]\nx86 = [\"cx33\"]\n",
        ),
        expect![[r#"
            images/x.toml:24:12: hcloud.location is given beside hcloud.locations; keep one: `locations = ["fsn1", "nbg1"]` lists locations in order of preference
            images/x.toml:27:7: hcloud.server_type.x86 is given beside hcloud.server_types.x86; keep one: `x86 = ["..."]` in [hcloud.server_types] lists types in order of preference"#]],
    );
    check(
        &with(
            "[hcloud]\narchitectures = [\"x86\"]\nlocations = [\"fsn1\", \"FSN2\", \"fsn1\"]\n[hcloud.server_types]\nx86 = [\"cx23\", \"CX33\", \"cx23\"]\narm = []\nriscv = [\"x\"]\n",
        ),
        expect![[r#"
            images/x.toml:24:22: hcloud.locations[1] "FSN2" is not a location name; use a name such as "fsn1", "nbg1", "hel1", "ash", "hil" or "sin"
            images/x.toml:24:30: hcloud.locations[2] "fsn1" is listed twice; list each once, in order of preference
            images/x.toml:26:16: hcloud.server_types.x86[1] "CX33" is not a server type name; use a name such as "cx23" or "cax11", as `hcloud server-type list` shows them
            images/x.toml:26:24: hcloud.server_types.x86[2] "cx23" is listed twice; list each once, in order of preference
            images/x.toml:27:7: hcloud.server_types.arm is empty; list the smallest type the image will run on first, then any fallbacks
            images/x.toml:28:1: hcloud.server_types.riscv is not a known key; known keys in [hcloud.server_types]: x86, arm"#]],
    );
    check(
        &with(
            "[hcloud]\narchitectures = [\"x86\"]\nlocations = []\n[hcloud.server_types]\nx86 = \"cx23\"\n",
        ),
        expect![[r#"
            images/x.toml:24:13: hcloud.locations is empty; list at least one location, such as ["fsn1", "nbg1"]
            images/x.toml:26:7: hcloud.server_types.x86 must be an array of strings, not a string"#]],
    );
}

#[test]
fn debian_architecture_name_in_hcloud() {
    check(
        &with("[hcloud]\narchitectures = [\"amd64\"]\n"),
        expect![[
            r#"images/x.toml:23:18: hcloud.architectures[0] "amd64" is not a Hetzner Cloud architecture; Hetzner Cloud calls it "x86""#
        ]],
    );
}

#[test]
fn raid5_with_two_drives() {
    check(
        &with(&format!(
            "{ROBOT}raid_level = 5\n[[robot.disk.partitions]]\nmount = \"/boot\"\nfilesystem = \"ext4\"\nsize = \"1G\"\n[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"all\"\n"
        )),
        expect![
            "images/x.toml:28:14: robot.disk.raid_level RAID 5 needs at least 3 drives, but 2 are listed; add drives, or choose RAID 1"
        ],
    );
}

#[test]
fn all_not_last() {
    check(
        &with(&format!(
            "{ROBOT}[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"all\"\n[[robot.disk.partitions]]\nmount = \"/var\"\nfilesystem = \"ext4\"\nsize = \"10G\"\n"
        )),
        expect![
            "images/x.toml:31:8: robot.disk.partitions[0].size all is only allowed on the last partition; move this partition to the end, or give it a fixed size"
        ],
    );
}

#[test]
fn two_root_mounts() {
    check(
        &with(&format!(
            "{ROBOT}[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"10G\"\n[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"xfs\"\nsize = \"all\"\n"
        )),
        expect![
            "images/x.toml:33:9: robot.disk.partitions[1].mount / is mounted twice; keep one partition or volume per mount point"
        ],
    );
}

#[test]
fn root_too_small_and_boot_too_small() {
    check(
        &with(&format!(
            "{ROBOT}[[robot.disk.partitions]]\nmount = \"/boot\"\nfilesystem = \"ext4\"\nsize = \"100M\"\n[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"1G\"\n"
        )),
        expect![[r#"
        images/x.toml:31:8: robot.disk.partitions[0].size 100M is too small for /boot; use at least 200M
        images/x.toml:35:8: robot.disk.partitions[1].size 1G is too small for /; use at least 1500M"#]],
    );
}

#[test]
fn esp_not_at_boot_efi_and_uefi_without_one() {
    check(
        &with(&format!(
            "{ROBOT}uefi = true\n[[robot.disk.partitions]]\nmount = \"/boot\"\nfilesystem = \"esp\"\nsize = \"512M\"\n[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"all\"\n"
        )),
        expect![[
            r#"images/x.toml:30:9: robot.disk.partitions[0].mount an esp partition must be mounted at /boot/efi, not "/boot"; set mount = "/boot/efi""#
        ]],
    );
}

#[test]
fn volume_group_not_defined_and_group_without_volumes() {
    check(
        &with(&format!(
            "{ROBOT}[[robot.disk.partitions]]\nmount = \"/boot\"\nfilesystem = \"ext4\"\nsize = \"1G\"\n[[robot.disk.partitions]]\nmount = \"lvm\"\nvolume_group = \"vg0\"\nsize = \"all\"\n[[robot.disk.volumes]]\nvg = \"vg1\"\nname = \"root\"\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"20G\"\n"
        )),
        expect![[r#"
        images/x.toml:34:16: robot.disk.partitions[1].volume_group volume group "vg0" has no volumes; add [[robot.disk.volumes]] entries for it, or remove the partition
        images/x.toml:37:6: robot.disk.volumes[0].vg volume group "vg1" is not defined; add a partition with mount = "lvm" and this volume_group"#]],
    );
}

#[test]
fn duplicate_file_paths() {
    check(
        &with(
            "[[system.files]]\npath = \"/etc/motd\"\ncontent = \"a\"\n[[system.files]]\npath = \"/etc/motd\"\ncontent = \"b\"\n",
        ),
        expect![[
            r#"images/x.toml:26:8: system.files[1].path "/etc/motd" is already placed by an earlier entry; merge the two entries"#
        ]],
    );
}

#[test]
fn script_file_missing() {
    check(
        &with("[[system.scripts]]\npath = \"scripts/missing.sh\"\n"),
        expect![[
            r#"images/x.toml:23:8: system.scripts[0].path "scripts/missing.sh" cannot be read: no such file; create it beside the spec, or fix the path"#
        ]],
    );
}

#[test]
fn script_outside_the_spec_directory() {
    check(
        &with("[[system.scripts]]\npath = \"../secret.sh\"\n"),
        expect![[
            r#"images/x.toml:23:8: system.scripts[0].path "../secret.sh" must be a relative path inside the spec's directory; put the file beside the spec and name it relative to it"#
        ]],
    );
}

#[test]
fn file_with_content_and_source() {
    check(
        &with("[[system.files]]\npath = \"/etc/motd\"\ncontent = \"a\"\nsource = \"files/motd\"\n"),
        expect![
            "images/x.toml:25:10: system.files[0].source cannot be combined with content; keep one of content and source"
        ],
    );
}

#[test]
fn file_mode_and_owner() {
    check(
        &with(
            "[[system.files]]\npath = \"etc/motd\"\nmode = \"0999\"\nowner = \"root\"\ncontent = \"a\"\n",
        ),
        expect![[r#"
        images/x.toml:23:8: system.files[0].path "etc/motd" is not an absolute file path; use a path such as "/etc/example.conf"
        images/x.toml:24:8: system.files[0].mode "0999" is not an octal mode; write it as a string such as "0644"
        images/x.toml:25:9: system.files[0].owner "root" is not user:group; write it as "root:root" or "1000:1000""#]],
    );
}

#[test]
fn bad_sha256_pin() {
    check(
        &replaced(
            "[runc]\nversion = \"1.3.3\"\n",
            "[runc]\nversion = \"1.3.3\"\nsha256 = { amd64 = \"ABC\" }\n",
        ),
        expect![[
            r#"images/x.toml:19:20: runc.sha256.amd64 "ABC" is not a sha256 digest; write 64 lower-case hex digits, as sha256sum prints them"#
        ]],
    );
}

#[test]
fn bad_mirror_url() {
    check(
        &replaced("[crictl]\n", "[crictl]\nurl = \"ftp://mirror\"\n"),
        expect![[
            r#"images/x.toml:21:7: crictl.url "ftp://mirror" is not an http(s) URL; write a URL such as "https://mirror.example.com/path""#
        ]],
    );
}

#[test]
fn unknown_kubernetes_source() {
    check(
        &replaced(
            "version = \"1.34.2\"",
            "version = \"1.34.2\"\nsource = \"snap\"",
        ),
        expect![[
            r#"images/x.toml:13:10: kubernetes.source "snap" is not a source; use "apt" (pkgs.k8s.io) or "binaries" (release downloads)"#
        ]],
    );
}

#[test]
fn binaries_url_with_apt_source() {
    check(
        &replaced(
            "version = \"1.34.2\"",
            "version = \"1.34.2\"\nbinaries_url = \"https://mirror.example.com/k8s\"",
        ),
        expect![[
            r#"images/x.toml:13:16: kubernetes.binaries_url only applies to source = "binaries"; remove it, or set source = "binaries""#
        ]],
    );
}

#[test]
fn flavor_that_fools_installimage() {
    check(
        &replaced(
            "version = \"12\"",
            "version = \"12\"\nflavor = \"k8s-archive\"",
        ),
        expect!["ok"],
    );
}

#[test]
fn unknown_release_needs_a_codename() {
    check(
        &replaced("version = \"12\"", "version = \"14\""),
        expect![[
            r#"images/x.toml:4:1: base.codename is missing, and debian 14 is not a release caph-image knows; add `codename = "..."` to [base]"#
        ]],
    );
}

#[test]
fn unsupported_distribution() {
    check(
        &replaced("distribution = \"debian\"", "distribution = \"fedora\""),
        expect![[
            r#"images/x.toml:5:16: base.distribution "fedora" is not supported; use "ubuntu" or "debian""#
        ]],
    );
}

#[test]
fn base_tarball_must_be_pinned() {
    check(
        &with("[base.rootfs]\ntarball = \"https://example.com/base.tar.gz\"\n"),
        expect![[
            r#"images/x.toml:23:11: base.rootfs.sha256 is missing: a base tarball must be pinned; add `sha256 = "<64 hex digits>"` to [base.rootfs]"#
        ]],
    );
}

#[test]
fn packages_modules_and_sysctls() {
    check(
        &with(
            "[system]\npackages = [\"Open ISCSI\"]\nkernel_modules = [\"ip vs\"]\nsysctls = { \"vm max\" = \"1\" }\n",
        ),
        expect![[r#"
        images/x.toml:23:13: system.packages[0] "Open ISCSI" is not a package name; use a Debian package name, optionally with =VERSION
        images/x.toml:24:19: system.kernel_modules[0] "ip vs" is not a kernel module name; use letters, digits, _ and -
        images/x.toml:25:13: system.sysctls.vm max "vm max" is not a sysctl name; use a dotted name such as "vm.max_map_count""#]],
    );
}

#[test]
fn hostname_pattern() {
    check(
        &with(
            "[robot]\nhostname = \"node_{server_number}\"\n[robot.disk]\ndrives = [\"/dev/sda\"]\n[[robot.disk.partitions]]\nmount = \"/\"\nfilesystem = \"ext4\"\nsize = \"all\"\n",
        ),
        expect![[
            r#"images/x.toml:23:12: robot.hostname "node_{server_number}" does not give a valid hostname; use letters, digits and -, with {server_number} where the server's number goes"#
        ]],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let spec = VALID
        .replace("name = \"test-image\"", "name = \"bad+name\"")
        .replace("version = \"1.34.2\"", "version = \"v1.34.2\"")
        .replace("[runc]\n", "[runc]\nsha = 1\n");
    check(
        &spec,
        expect![[r#"
        images/x.toml:2:8: image.name "bad+name" is not a valid label value: '+' is not allowed; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit
        images/x.toml:12:11: kubernetes.version "v1.34.2" must not start with 'v'; write "1.34.2"
        images/x.toml:18:1: runc.sha is not a known key; did you mean `sha256`?"#]],
    );
}

#[test]
fn arbitrary_input_never_panics() {
    // Cheap robustness sweep: every prefix of a full spec, and the spec with each byte flipped.
    let full = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../images/ubuntu-24.04-k8s-1.36.toml"
    ))
    .unwrap();
    let files = MapFiles::default();
    for end in (0..full.len()).filter(|end| full.is_char_boundary(*end)) {
        let _ = caph_core::spec::load("x.toml", &full.as_bytes()[..end], &files);
    }
    let mut bytes = full.into_bytes();
    for index in 0..bytes.len() {
        let original = bytes[index];
        bytes[index] = original.wrapping_add(1);
        let _ = caph_core::spec::load("x.toml", &bytes, &files);
        bytes[index] = original;
    }
}
