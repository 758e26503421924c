//! `caph-image build hcloud` end to end: the real binary against the simulator, with real SSH
//! machines and a loopback mirror; then the snapshot is booted and inspected over SSH.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use caph_hcloud::Client;
use caph_hcloud::client::{
    CreateServerRequest, CreateSshKeyRequest, IdOrName, ServerStatus, WaitOptions,
};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, connect_when_ready};

use crate::cloud::{Cloud, Target};

/// Runs the real binary with `args` against the cloud, in `dir`.
pub async fn run_caph_image(cloud: &Cloud, dir: &std::path::Path, args: &[&str]) -> Output {
    let env: Vec<(&str, String)> = cloud.env().into_iter().collect();
    run_caph_image_with(&env, dir, args).await
}

/// Runs the real binary with `args` and the environment `env`, in `dir`.
pub async fn run_caph_image_with(
    env: &[(&str, String)],
    dir: &std::path::Path,
    args: &[&str],
) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .output()
        .await
        .expect("caph-image runs");
    // The progress lines, with their timestamps, show where a slow or failing run spent its time.
    eprintln!("caph-image {}\n{}", args.join(" "), text(&output.stderr));
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_labelled_snapshots_and_leaves_nothing_else() {
    // The simulator, or with CAPH_IMAGE_LIVE=1 a real project (README, "Live runs").
    let Some(target) = Target::start("builds_labelled_snapshots_and_leaves_nothing_else").await
    else {
        return;
    };
    let architectures = target.architectures();
    let name = target.image_name("e2e-node");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        target.spec(&name, &architectures),
    )
    .unwrap();

    let output = run_caph_image_with(
        &target.env(),
        dir.path(),
        &[
            "build",
            "hcloud",
            "node.toml",
            "--no-progress",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr:\n{}",
        text(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let snapshots = result["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), architectures.len());
    let ids: Vec<i64> = snapshots
        .iter()
        .map(|snapshot| snapshot["id"].as_str().unwrap().parse().unwrap())
        .collect();

    // Nothing but the snapshots is left: no server, no key, no unfinished image.
    target.assert_nothing_left().await;
    let client = target.client();
    for (arch, id) in architectures.iter().zip(&ids) {
        let found = caph_hcloud::backend::caph_lookup(
            &client,
            &name,
            caph_core::Arch::parse(arch).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(found.len(), 1, "{arch}: CAPH finds {found:?}");
        let snapshot = &found[0];
        assert_eq!(snapshot.id.0, *id);
        assert_eq!(
            snapshot
                .labels
                .get("kubernetes-version")
                .map(String::as_str),
            Some("1.34.2")
        );
        assert!(
            !snapshot.labels.contains_key("caph-image-build"),
            "a finished snapshot keeps no build label"
        );
        assert!(!snapshot.labels.contains_key("caph-image-pending-name"));
    }
    if let Some(cloud) = target.sim() {
        // Every mirror download was checked against a published checksum.
        let requests = cloud.mirror.requests();
        assert!(
            requests.iter().any(|path| path.ends_with("kubelet.sha256")),
            "{requests:?}"
        );
    }

    // Each snapshot's first boot as CAPH meets it, by `caph-image verify hcloud` (found by its
    // name, as CAPH finds imageName), which leaves nothing behind either; then a look inside.
    for snapshot in snapshots {
        let id: i64 = snapshot["id"].as_str().unwrap().parse().unwrap();
        let arch = snapshot["architecture"].as_str().unwrap();
        verify_snapshot(&target, dir.path(), &name, id, arch).await;
        target.assert_nothing_left().await;
        inspect_node(&client, id, arch, &name).await;
    }
    if let Some(cloud) = target.sim() {
        cloud.assert_openapi_clean();
    }
    target.remove_snapshots(&ids).await;
}

/// `caph-image verify hcloud NAME --arch ARCH`: the snapshot CAPH finds by `name` is `id`, and
/// its first boot passes every check: cloud-init done as a new instance with the probe's marker,
/// only the pinned host key, a machine id of this boot, no build key, and the node checks the
/// image promises (in the simulator, whose machines run no systemd, those of a running node are
/// not checked, and say so).
async fn verify_snapshot(target: &Target, dir: &std::path::Path, name: &str, id: i64, arch: &str) {
    let output = run_caph_image_with(
        &target.env(),
        dir,
        &[
            "verify",
            "hcloud",
            name,
            "--arch",
            arch,
            "--no-progress",
            "--output",
            "json",
        ],
    )
    .await;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", text(&output.stdout)));
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(report["image"]["id"], id, "{report:#}");
    for name in crate::verify::HCLOUD_FIRST_BOOT_FINDINGS.iter().chain(&[
        "kubelet-version",
        "kubelet-enabled",
        "containerd-enabled",
        "sysctl-config vm.max_map_count",
        "sysctl-config net.ipv4.ip_forward",
    ]) {
        let (status, detail) = crate::verify::finding(&report, name);
        assert_eq!(status, "ok", "{arch}: {name}: {detail}");
    }
    if target.sim().is_some() {
        for name in ["module ip_vs", "containerd-active", "time-sync"] {
            let (status, detail) = crate::verify::finding(&report, name);
            assert_eq!(status, "not-checked", "{arch}: {name}: {detail}");
        }
    }
}

/// Creates a server from snapshot `id`, logs in with a pinned host key and checks what the plan
/// wrote (`verify_snapshot` checked its first boot).
async fn inspect_node(client: &Client, id: i64, arch: &str, name: &str) {
    let user_key = KeyPair::generate_ed25519("inspector").unwrap();
    let host_key = KeyPair::generate_ed25519("inspected").unwrap();
    let key = client
        .create_ssh_key(&CreateSshKeyRequest {
            name: format!("inspector-{arch}"),
            public_key: user_key.public_key().to_openssh(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    let mut request = CreateServerRequest::new(
        format!("inspect-{arch}"),
        IdOrName::Name(if arch == "x86" {
            "cx23".into()
        } else {
            "cax11".into()
        }),
        IdOrName::Id(id),
    );
    request.ssh_keys = vec![IdOrName::Id(key.id.0)];
    let pem = host_key.private_key_openssh().unwrap();
    let indented: String = pem
        .expose()
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    // The host key to pin, given through the server's own cloud-init.
    request.user_data = Some(caph_hcloud::client::SecretString::new(format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        host_key.public_key().to_openssh()
    )));
    let created = client.create_server(&request).await.unwrap();
    let wait = WaitOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    client
        .wait_for_actions(&created.all_actions(), &wait, &mut |_| {})
        .await
        .unwrap();
    let server = client
        .wait_for_server_status(
            created.server.id,
            &ServerStatus::Running,
            &wait,
            &mut |_| {},
        )
        .await
        .unwrap();
    let address = SocketAddr::new(std::net::IpAddr::V4(server.public_net.ipv4.unwrap().ip), 22);
    let session = connect_when_ready(
        &ConnectConfig::new(
            address,
            "root",
            user_key,
            HostKeyPolicy::Pinned(host_key.public_key()),
        ),
        &mut |_| {},
    )
    .await
    .unwrap();

    let check = |command: &'static str| {
        let session = &session;
        async move {
            let output = session.exec_capture(command).await.unwrap();
            assert_eq!(
                output.exit_code, 0,
                "{arch}: `{command}` failed: {}",
                output.stderr
            );
            output.stdout
        }
    };
    assert!(
        check("cat /etc/modules-load.d/caph-image.conf")
            .await
            .contains("br_netfilter\nip_vs")
    );
    let sysctls = check("cat /etc/sysctl.d/99-zz-caph-image.conf").await;
    assert!(
        sysctls.contains("net.ipv4.ip_forward = 1")
            && sysctls.contains("vm.max_map_count = 524288"),
        "{sysctls}"
    );
    assert!(
        check("cat /etc/containerd/config.toml")
            .await
            .contains("SystemdCgroup = true")
    );
    let release = check("cat /etc/caph-image-release").await;
    assert!(
        release.contains(&format!("CAPH_IMAGE_NAME={name}"))
            && release.contains(&format!("ARCHITECTURE={arch}")),
        "{release}"
    );
    assert_eq!(
        check("cat /etc/e2e-marker").await,
        "built by the end-to-end test\n"
    );
    session.close().await;
    let action = client.delete_server(created.server.id).await.unwrap();
    client
        .wait_for_action(&action, &wait, &mut |_| {})
        .await
        .unwrap();
    client.delete_ssh_key(key.id).await.unwrap();
}
