//! Plans of the shipped images: snapshots, determinism, valid bash, and the containerd config.

use std::path::PathBuf;

use caph_core::plan::{self, Action, Target};
use caph_core::{Arch, ImageSpec};
use expect_test::expect_file;

use crate::DirFiles;

fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../images")
}

fn shipped(name: &str) -> ImageSpec {
    let path = images_dir().join(name);
    let bytes = std::fs::read(&path).unwrap();
    caph_core::spec::load(&format!("images/{name}"), &bytes, &DirFiles(images_dir()))
        .unwrap_or_else(|diagnostics| panic!("{name} does not validate:\n{diagnostics}"))
}

const SHIPPED: &[&str] = &[
    "ubuntu-24.04-k8s-1.36.toml",
    "debian-13-k8s-1.36.toml",
    "debian-12-k8s-1.36.toml",
];

/// The day the shipped specs were last brought up to date; they must pass `validate --strict`
/// on it. A fixed day, so that a release reaching its end of life later does not fail an
/// unrelated build: `caph-image validate --strict images/*.toml` says so on the day.
const SPECS_UPDATED: caph_core::releases::Date = caph_core::releases::Date::new(2026, 12, 6);

#[test]
fn shipped_specs_validate_strictly_and_pin_every_artifact() {
    for name in SHIPPED {
        let path = images_dir().join(name);
        let bytes = std::fs::read(&path).unwrap();
        let spec = caph_core::spec::load_as_of(
            &format!("images/{name}"),
            &bytes,
            &DirFiles(images_dir()),
            SPECS_UPDATED,
        )
        .unwrap_or_else(|diagnostics| panic!("{name} does not validate:\n{diagnostics}"));
        assert_eq!(spec.warnings, Vec::new(), "{name}: warnings under --strict");
        for arch in Arch::ALL {
            for (what, artifact) in [
                ("containerd", Some(&spec.containerd)),
                ("runc", Some(&spec.runc)),
                ("crictl", Some(&spec.crictl)),
                ("cni", spec.cni.as_ref()),
            ] {
                let artifact = artifact.unwrap_or_else(|| panic!("{name}: no [{what}]"));
                assert!(
                    artifact.sha256.contains_key(&arch),
                    "{name}: {what} {arch} unpinned"
                );
            }
            let caph_core::spec::KubernetesSource::Binaries { sha256, .. } =
                &spec.kubernetes.source
            else {
                panic!("{name}: Kubernetes from apt has no per-file pins")
            };
            for component in caph_core::spec::KUBERNETES_COMPONENTS {
                assert!(
                    sha256
                        .get(&arch)
                        .is_some_and(|pins| pins.contains_key(*component)),
                    "{name}: {component} {arch} unpinned"
                );
            }
        }
    }
}

#[test]
fn every_shipped_image_is_listed_here() {
    let mut on_disk: Vec<String> = std::fs::read_dir(images_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SHIPPED.iter().map(|name| name.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn plan_snapshots() {
    for name in SHIPPED {
        let spec = shipped(name);
        let stem = name.trim_end_matches(".toml");
        let hcloud = plan::render(&spec, Target::Hcloud, Arch::X86)
            .expect("the plan")
            .render_script();
        expect_file![format!("snapshots/{stem}.hcloud-x86.sh")].assert_eq(&hcloud);
        let tarball = plan::render(&spec, Target::Tarball, Arch::Arm)
            .expect("the plan")
            .render_script();
        expect_file![format!("snapshots/{stem}.tarball-arm.sh")].assert_eq(&tarball);
    }
}

#[test]
fn plans_are_byte_identical_across_renders_and_loads() {
    for name in SHIPPED {
        for target in [Target::Hcloud, Target::Tarball] {
            for arch in Arch::ALL {
                let first = plan::render(&shipped(name), target, arch).expect("the plan");
                let second = plan::render(&shipped(name), target, arch).expect("the plan");
                assert_eq!(first, second);
                assert_eq!(first.render_script(), second.render_script());
            }
        }
    }
}

#[test]
fn every_script_is_valid_bash_and_strict() {
    for name in SHIPPED {
        for target in [Target::Hcloud, Target::Tarball] {
            for step in plan::render(&shipped(name), target, Arch::X86)
                .expect("the plan")
                .steps
            {
                let script = step.to_script();
                assert!(
                    script.starts_with("set -euo pipefail\n"),
                    "{name} {}: not strict",
                    step.name
                );
                let output = std::process::Command::new("bash")
                    .arg("-n")
                    .arg("-c")
                    .arg(&script)
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{name} {}: {}",
                    step.name,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}

#[test]
fn plan_has_the_promised_steps_in_order() {
    let spec = shipped("ubuntu-24.04-k8s-1.36.toml");
    let names: Vec<String> = plan::render(&spec, Target::Hcloud, Arch::X86)
        .expect("the plan")
        .steps
        .into_iter()
        .map(|s| s.name)
        .collect();
    expect_test::expect![[r#"
        wait-for-system
        kernel-modules-config
        sysctl-config
        apply-kernel-settings
        swap-off
        packages
        containerd
        containerd-unit
        containerd-directories
        containerd-config
        runc
        crictl
        crictl-config
        cni-plugins
        kubernetes
        kubelet-unit
        kubelet-kubeadm-dropin
        enable-services
        file-1
        provenance
        hygiene"#]]
    .assert_eq(&names.join("\n"));
}

fn containerd_config_of(name: &str) -> toml::Table {
    let spec = shipped(name);
    let plan = plan::render(&spec, Target::Hcloud, Arch::X86).expect("the plan");
    let step = plan
        .steps
        .iter()
        .find(|step| step.name == "containerd-config")
        .unwrap();
    let Action::PlaceFile { path, content, .. } = &step.action else {
        panic!("not a file step")
    };
    assert_eq!(path, "/etc/containerd/config.toml");
    toml::from_str(std::str::from_utf8(content).unwrap()).unwrap()
}

fn runc_options<'t>(config: &'t toml::Table, plugin: &str) -> &'t toml::Table {
    config["plugins"][plugin]["containerd"]["runtimes"]["runc"]["options"]
        .as_table()
        .unwrap()
}

#[test]
fn containerd_2_config_parses_as_version_3() {
    let config = containerd_config_of("ubuntu-24.04-k8s-1.36.toml");
    assert_eq!(config["version"].as_integer(), Some(3));
    assert_eq!(
        runc_options(&config, "io.containerd.cri.v1.runtime")["SystemdCgroup"].as_bool(),
        Some(true)
    );
    let images = config["plugins"]["io.containerd.cri.v1.images"]
        .as_table()
        .unwrap();
    // kubeadm 1.36 uses pause 3.10.2 (caph_core::releases::PAUSE_VERSIONS).
    assert_eq!(
        images["pinned_images"]["sandbox"].as_str(),
        Some("registry.k8s.io/pause:3.10.2")
    );
    assert_eq!(
        images["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    assert_eq!(
        config["imports"].as_array().unwrap()[0].as_str(),
        Some("/etc/containerd/conf.d/*.toml")
    );
}

#[test]
fn containerd_1_config_parses_as_version_2() {
    // containerd 1.7.28 with Kubernetes 1.34: a pair containerd's RELEASES.md supports.
    let text = std::fs::read_to_string(images_dir().join("debian-12-k8s-1.36.toml"))
        .unwrap()
        .replace("version = \"1.36.4\"", "version = \"1.34.2\"")
        .replace("version = \"1.36.0\"", "version = \"1.34.0\"")
        .replace("version = \"2.3.4\"", "version = \"1.7.28\"");
    let spec = caph_core::spec::load("x.toml", text.as_bytes(), &DirFiles(images_dir()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    let plan = plan::render(&spec, Target::Tarball, Arch::X86).expect("the plan");
    let step = plan
        .steps
        .iter()
        .find(|step| step.name == "containerd-config")
        .unwrap();
    let Action::PlaceFile { content, .. } = &step.action else {
        panic!("not a file step")
    };
    let config: toml::Table =
        toml::from_str(std::str::from_utf8(content.as_slice()).unwrap()).unwrap();
    assert_eq!(config["version"].as_integer(), Some(2));
    assert_eq!(
        runc_options(&config, "io.containerd.grpc.v1.cri")["SystemdCgroup"].as_bool(),
        Some(true)
    );
    let cri = config["plugins"]["io.containerd.grpc.v1.cri"]
        .as_table()
        .unwrap();
    assert_eq!(
        cri["sandbox_image"].as_str(),
        Some("registry.k8s.io/pause:3.10.1")
    );
    assert_eq!(
        cri["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
}

#[test]
fn automatic_upgrades_stay_off_unless_the_spec_opts_in() {
    let hygiene = |text: &str| {
        let spec = caph_core::spec::load("x.toml", text.as_bytes(), &DirFiles(images_dir()))
            .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
        plan::render(&spec, Target::Tarball, Arch::X86)
            .expect("the plan")
            .steps
            .into_iter()
            .find(|step| step.name == "hygiene")
            .unwrap()
            .to_script()
    };
    let shipped = std::fs::read_to_string(images_dir().join("debian-12-k8s-1.36.toml")).unwrap();
    let off = hygiene(&shipped);
    assert!(!off.contains("systemctl unmask"), "{off}");
    assert!(
        off.contains("APT::Periodic::Unattended-Upgrade \"0\""),
        "{off}"
    );
    let on = hygiene(&shipped.replace("[system]\n", "[system]\nautomatic_upgrades = true\n"));
    assert!(on.contains("systemctl unmask apt-daily.timer"), "{on}");
    assert!(!on.contains("20auto-upgrades"), "{on}");
}

#[test]
fn installimage_names() {
    assert_eq!(
        shipped("ubuntu-24.04-k8s-1.36.toml")
            .base
            .installimage_stem(Arch::X86),
        "Ubuntu-2404-noble-amd64-k8s-v1.36.4"
    );
    assert_eq!(
        shipped("debian-12-k8s-1.36.toml")
            .base
            .installimage_stem(Arch::Arm),
        "Debian-1200-bookworm-arm64-k8s-v1.36.4"
    );
}

#[test]
fn checksum_mismatch_aborts_with_both_digests() {
    // Run the containerd step's download function against a local file: a wrong pin must stop the script.
    let spec = shipped("debian-12-k8s-1.36.toml");
    let plan = plan::render(&spec, Target::Tarball, Arch::X86).expect("the plan");
    let script = plan
        .steps
        .iter()
        .find(|step| step.name == "containerd")
        .unwrap()
        .to_script();
    let functions_end = script.find("\nexpected=").unwrap() + 1;
    let dir = std::env::temp_dir().join(format!("caph-core-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("artifact"), b"payload").unwrap();
    let probe = format!(
        "{}caph_fetch file://{}/artifact {}/out {} 'pinned by containerd.sha256.amd64 in the spec'\n",
        &script[..functions_end],
        dir.display(),
        dir.display(),
        "0".repeat(64)
    );
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(&probe)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let actual_digest = "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5";
    assert!(
        stderr.contains(&format!(
            "expected sha256 {} (pinned by containerd.sha256.amd64 in the spec), got {actual_digest}",
            "0".repeat(64)
        )),
        "{stderr}"
    );
}

#[test]
fn file_steps_reproduce_content_exactly() {
    // Run each file step's script into a scratch root and compare the bytes it wrote.
    let contents: [&[u8]; 4] = [
        b"text\nwith lines\n",
        b"no final newline",
        b"CAPH_IMAGE_FILE\nmarker inside\n",
        &[0, 159, 146, 150, 255],
    ];
    for content in contents {
        let dir = std::env::temp_dir().join(format!("caph-core-file-{}", std::process::id()));
        let target = dir.join("etc/example.conf");
        let step = caph_core::plan::Step {
            name: "file".to_string(),
            action: Action::PlaceFile {
                path: target.to_string_lossy().into_owned(),
                mode: 0o640,
                owner: format!("{}:{}", current_uid(), current_gid()),
                content: content.to_vec(),
            },
        };
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(step.to_script())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(std::fs::read(&target).unwrap(), content);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The current user and group, so chown succeeds without root.
fn current_uid() -> String {
    String::from_utf8(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string()
}

fn current_gid() -> String {
    String::from_utf8(
        std::process::Command::new("id")
            .arg("-g")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string()
}

#[test]
fn tarball_nodes_get_what_the_real_installimage_needs() {
    // installimage regenerates only the host key types whose files exist, writes 99-hetzner.conf,
    // and leaves GRUB_CMDLINE_LINUX alone: see shared/reference/real-consumers.md.
    let spec = shipped("debian-12-k8s-1.36.toml");
    let placed = |target, arch| -> Vec<String> {
        plan::render(&spec, target, arch)
            .expect("the plan")
            .steps
            .iter()
            .filter_map(|step| match &step.action {
                plan::Action::PlaceFile { path, .. } => Some(path.clone()),
                plan::Action::Run { .. } => None,
            })
            .collect()
    };
    let x86_tarball = placed(Target::Tarball, Arch::X86);
    assert!(x86_tarball.contains(&plan::GRUB_CONFIG_PATH.to_owned()));
    assert!(x86_tarball.contains(&plan::HOST_KEYS_UNIT_PATH.to_owned()));
    // On arm64 installimage sets the consoles itself; a cloud server keeps Hetzner's settings.
    assert!(!placed(Target::Tarball, Arch::Arm).contains(&plan::GRUB_CONFIG_PATH.to_owned()));
    let hcloud = placed(Target::Hcloud, Arch::X86);
    assert!(!hcloud.contains(&plan::GRUB_CONFIG_PATH.to_owned()));
    assert!(!hcloud.contains(&plan::HOST_KEYS_UNIT_PATH.to_owned()));
    assert!(plan::GRUB_SERIAL_CONSOLE.contains("console=tty0 console=ttyS0,115200"));
    // Our sysctls sort after installimage's 99-hetzner.conf, so ours win where keys overlap.
    assert!(plan::SYSCTL_CONFIG_PATH.rsplit('/').next().unwrap() > "99-hetzner.conf");

    let hygiene = plan::render(&spec, Target::Tarball, Arch::X86)
        .expect("the plan")
        .steps
        .into_iter()
        .find(|step| step.name == "hygiene")
        .unwrap()
        .to_script();
    for key_type in plan::HOST_KEY_PLACEHOLDER_TYPES {
        assert!(
            hygiene.contains(&format!(
                "install -m 0600 /dev/null /etc/ssh/ssh_host_{key_type}_key"
            )),
            "{hygiene}"
        );
    }
}

#[test]
fn a_failed_download_says_so_with_the_url_and_curls_reason() {
    // Issue 15: a refused connection used to end in "no sha256 for ... in <url>".
    let spec = shipped("debian-12-k8s-1.36.toml");
    let plan = plan::render(&spec, Target::Tarball, Arch::X86).expect("the plan");
    let script = plan
        .steps
        .iter()
        .find(|step| step.name == "containerd")
        .unwrap()
        .to_script();
    let functions_end = script.find("\nexpected=").unwrap() + 1;
    // Port 9 (discard) on loopback: nothing listens there, so the connection is refused.
    for probe in [
        "expected=$(caph_published_sha256 http://127.0.0.1:9/x.sha256sum x.tar.gz)\necho \"not reached: $expected\"\n",
        "caph_fetch http://127.0.0.1:9/x.tar.gz /tmp/caph-core-never-written 00\necho not reached\n",
    ] {
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{}{probe}", &script[..functions_end]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("not reached"),
            "{stderr}"
        );
        assert!(
            stderr.contains("caph-image: downloading http://127.0.0.1:9/x.")
                && stderr.contains("failed: curl: (7)"),
            "{stderr}"
        );
        assert!(!stderr.contains("no sha256"), "{stderr}");
    }
}
