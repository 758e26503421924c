//! First-boot evidence and its judgement: the evidence script run by bash over a node's tree as
//! a first boot left it (and as a broken one left it), judged; and the node checks an image
//! promises in its own files.

use std::path::Path;

use caph_core::checks::{self, FindingStatus, NodePromise};
use caph_core::firstboot::{self, Evidence, Expectations, HostKeys, MachineId};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGOrOA5ejAdyiWQ/B1dYLW/qnSjl1XMGt/eKf5BpVy51";
const OTHER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILiJq2+1zHzp2KeE8mCYlq+gGf1tciCl8hhK3R/rNqMJ";

fn write(root: &Path, path: &str, content: &str) {
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, content).unwrap();
}

/// A node's tree as cloud-init's first boot with the probe leaves it.
fn booted_node(root: &Path, errors: &str) {
    let stage = |name: &str| {
        format!(
            "\"{name}\": {{\"errors\": [{errors}], \"finished\": 1796534923.8, \"start\": 1796534915.6}}"
        )
    };
    write(
        root,
        firstboot::STATUS_JSON_PATH,
        &format!(
            "{{\"v1\": {{\"datasource\": \"DataSourceNoCloud [seed=/var/lib/cloud/seed/nocloud-net]\", {}, {}, {}, {}, \"stage\": null}}}}",
            stage("init-local"),
            stage("init"),
            stage("modules-config"),
            stage("modules-final")
        ),
    );
    write(
        root,
        firstboot::RESULT_JSON_PATH,
        &format!(
            "{{\"v1\": {{\"datasource\": \"DataSourceNoCloud [seed=/var/lib/cloud/seed/nocloud-net]\", \"errors\": [{errors}]}}}}"
        ),
    );
    write(root, firstboot::INSTANCE_ID_PATH, "verify-1\n");
    write(root, "/etc/hostname", "node-1\n");
    write(
        root,
        "/etc/machine-id",
        "d24042bfa75a516691bb1d0beeff24ca\n",
    );
    write(
        root,
        firstboot::PROBE_MARKER_PATH,
        "kubeadm join would run on node-1\n",
    );
    write(
        root,
        firstboot::PROBE_CONFIG_PATH,
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\n",
    );
    // Without a trailing line break, as ssh-keygen never writes but cloud-init's ssh_keys may.
    write(root, "/etc/ssh/ssh_host_ed25519_key.pub", KEY);
    write(
        root,
        firstboot::CLOUD_INIT_LOG_PATH,
        "2026-12-06 05:28:06,389 - util.py[DEBUG]: Cloud-init v. 22.4.2 running 'init-local'\n",
    );
}

fn evidence(root: &Path) -> Evidence {
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\n{}",
            firstboot::evidence_script(&root.to_string_lossy(), &[])
        ))
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{output:?}");
    Evidence::parse(&String::from_utf8_lossy(&output.stdout))
}

fn expectations(host_keys: HostKeys) -> Expectations {
    Expectations {
        hostname: "node-1".into(),
        instance_id: "verify-1".into(),
        probe: true,
        host_keys,
        machine_id: MachineId::Not(String::new()),
    }
}

/// `name: status` of every finding.
fn statuses(findings: &[caph_core::checks::Finding]) -> Vec<String> {
    findings
        .iter()
        .map(|finding| format!("{}: {}", finding.name, finding.status.word()))
        .collect()
}

#[test]
fn a_good_first_boot_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    booted_node(dir.path(), "");
    let findings = firstboot::judge_first_boot(
        &evidence(dir.path()),
        &expectations(HostKeys::NotAnyOf(vec![OTHER_KEY.into()])),
    );
    assert_eq!(
        statuses(&findings),
        [
            "cloud-init-status: ok",
            "cloud-init-result: ok",
            "cloud-init-instance: ok",
            "hostname: ok",
            "bootstrap-marker: ok",
            "host-keys-new: ok",
            "machine-id-new: ok",
            "cloud-init-sigterm: ok",
        ],
        "{findings:#?}"
    );
    let keys = findings.iter().find(|f| f.name == "host-keys-new").unwrap();
    assert_eq!(
        keys.detail,
        "made for this node: ssh-ed25519 SHA256:6AveWjxHMHWE7RnAPSN9/3UsBnsN/RzmJrVntKePV2o"
    );
    // The pinned key, and only it.
    let findings = firstboot::judge_first_boot(
        &evidence(dir.path()),
        &expectations(HostKeys::Exactly(format!("{KEY} comment"))),
    );
    assert!(findings.iter().all(|f| f.status == FindingStatus::Ok));
}

#[test]
fn a_broken_first_boot_says_what_broke() {
    let dir = tempfile::tempdir().unwrap();
    booted_node(
        dir.path(),
        "\"('locale', ProcessExecutionError(\\\"Unexpected error while running command.\\\\nCommand: ['update-locale']\\\"))\"",
    );
    write(
        dir.path(),
        firstboot::INSTANCE_ID_PATH,
        "iid-from-the-image\n",
    );
    write(
        dir.path(),
        "/etc/machine-id",
        "d24042bfa75a516691bb1d0beeff24ca\n",
    );
    std::fs::remove_file(
        dir.path()
            .join(firstboot::PROBE_MARKER_PATH.trim_start_matches('/')),
    )
    .unwrap();
    write(
        dir.path(),
        firstboot::CLOUD_INIT_LOG_PATH,
        "Received signal 15 resulting in exit. Cause:\n  SIGTERM\n",
    );
    let mut expected = expectations(HostKeys::NotAnyOf(vec![format!("{KEY} root@build")]));
    expected.machine_id = MachineId::Not("d24042bfa75a516691bb1d0beeff24ca".into());
    let findings = firstboot::judge_first_boot(&evidence(dir.path()), &expected);
    let detail = |name: &str| {
        let finding = findings.iter().find(|f| f.name == name).unwrap();
        assert_eq!(finding.status, FindingStatus::Failed, "{finding:?}");
        finding.detail.clone()
    };
    assert!(
        detail("cloud-init-status").starts_with("stage init-local: ('locale', ProcessExecutionError(\"Unexpected error while running command.")
    );
    assert!(detail("cloud-init-result").starts_with("1 error(s): "));
    assert!(
        detail("cloud-init-instance").contains("ran as instance iid-from-the-image, not verify-1")
    );
    assert!(detail("bootstrap-marker").contains("the user data's runcmd did not run"));
    assert!(detail("host-keys-new").starts_with("the image's own: ssh-ed25519 SHA256:"));
    assert!(detail("machine-id-new").contains("is the image's own"));
    assert!(detail("cloud-init-sigterm").contains("says SIGTERM 1 time(s)"));

    // Nothing at all: cloud-init never ran.
    let empty = tempfile::tempdir().unwrap();
    let findings = firstboot::judge_first_boot(
        &evidence(empty.path()),
        &expectations(HostKeys::NotAnyOf(Vec::new())),
    );
    assert_eq!(
        statuses(&findings),
        [
            "cloud-init-status: FAILED",
            "cloud-init-result: FAILED",
            "cloud-init-instance: FAILED",
            "hostname: FAILED",
            "bootstrap-marker: FAILED",
            "host-keys-new: FAILED",
            "machine-id-new: FAILED",
            "cloud-init-sigterm: not checked",
        ]
    );
}

#[test]
fn an_image_promises_its_node_checks_in_its_own_files() {
    let promise = NodePromise::from_image_files(
        Some("CAPH_IMAGE_NAME=debian-12-k8s\nKUBERNETES_VERSION=1.34.2\nBUILDER=\"caph-image 0.1.0\"\n"),
        Some("overlay\nbr_netfilter\n"),
        Some("net.ipv4.ip_forward = 1\n# a comment\nvm.max_map_count = 524288\n"),
    )
    .unwrap();
    assert_eq!(promise.modules, ["overlay", "br_netfilter"]);
    assert_eq!(promise.kubernetes_version, "1.34.2");
    let names: Vec<String> = checks::promised_checks(&promise)
        .into_iter()
        .map(|check| check.name)
        .collect();
    assert!(
        names.contains(&"module br_netfilter".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"sysctl vm.max_map_count".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|name| name.starts_with("swap")),
        "{names:?}"
    );
    let kubelet = checks::promised_checks(&promise)
        .into_iter()
        .find(|check| check.name == "kubelet-version")
        .unwrap();
    assert!(kubelet.expect.matches("Kubernetes v1.34.2"));

    let refused = NodePromise::from_image_files(None, Some(""), Some("")).unwrap_err();
    assert_eq!(
        refused,
        "/etc/caph-image-release is missing: the image was not built by caph-image, so it promises no node checks"
    );
    let refused = NodePromise::from_image_files(
        Some("KUBERNETES_VERSION=1.34.2\n"),
        Some(""),
        Some("junk\n"),
    )
    .unwrap_err();
    assert!(
        refused.contains("\"junk\" is not `key = value`"),
        "{refused}"
    );
}

#[test]
fn the_probe_is_cloud_config_shaped_like_kubeadms_bootstrap() {
    let probe = firstboot::probe_user_data("ssh_deletekeys: true\n");
    assert!(
        probe.starts_with("## template: jinja\n#cloud-config\n"),
        "{probe}"
    );
    assert!(
        probe.contains("write_files:\n") && probe.contains("runcmd:\n"),
        "{probe}"
    );
    assert!(probe.ends_with("ssh_deletekeys: true\n"), "{probe}");
}
