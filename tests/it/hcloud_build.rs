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

    // Boot each snapshot and look inside.
    for snapshot in snapshots {
        let id: i64 = snapshot["id"].as_str().unwrap().parse().unwrap();
        let arch = snapshot["architecture"].as_str().unwrap();
        inspect_node(&client, id, arch, &name).await;
    }
    if let Some(cloud) = target.sim() {
        cloud.assert_openapi_clean();
    }
    target.remove_snapshots(&ids).await;
}

/// Creates a server from snapshot `id`, logs in with a pinned host key and checks what the plan promised.
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
    // What CAPH's HCloudMachine gives a server: the host key to pin, and a kubeadm-like
    // bootstrap (files, then commands) that the server's own cloud-init runs at first boot.
    request.user_data = Some(caph_hcloud::client::SecretString::new(format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\nwrite_files:\n  - path: /etc/kubernetes/caph-e2e-bootstrap.yaml\n    content: |\n      kind: JoinConfiguration\nruncmd:\n  - 'echo \"kubeadm join would run on $(hostname)\" > /var/lib/caph-e2e-bootstrap-marker'\n",
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
    assert_eq!(
        check("/usr/local/bin/kubelet --version").await.trim(),
        "Kubernetes v1.34.2"
    );
    assert!(
        check("systemctl is-enabled kubelet containerd")
            .await
            .lines()
            .all(|line| line == "enabled")
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
    // First boot from the snapshot: the server's own cloud-init ran this server's user data as
    // a new instance, made its host keys from it (not the build server's, which hygiene
    // removed), and the boot gave it a machine id of its own (hygiene left it empty).
    let status = check("cloud-init status --wait").await;
    assert!(
        status.trim_end().ends_with("status: done"),
        "{arch}: {status}"
    );
    assert_eq!(
        check("cloud-init query instance_id").await.trim(),
        created.server.id.0.to_string(),
        "{arch}: a new instance to cloud-init"
    );
    assert_eq!(
        check("cat /var/lib/caph-e2e-bootstrap-marker").await.trim(),
        format!("kubeadm join would run on inspect-{arch}")
    );
    assert!(
        check("cat /etc/kubernetes/caph-e2e-bootstrap.yaml")
            .await
            .contains("kind: JoinConfiguration")
    );
    assert_eq!(
        check("cat /etc/ssh/ssh_host_ed25519_key.pub").await.trim(),
        host_key.public_key().to_openssh().trim(),
        "{arch}: the host key is the one this server's user data gave"
    );
    assert_eq!(
        check("cat /etc/machine-id").await.trim().len(),
        32,
        "{arch}: a machine id made at this server's boot"
    );
    // The build key is gone; only the inspector's key (added at this server's creation) remains.
    let keys = check("cat /root/.ssh/authorized_keys 2>/dev/null || true").await;
    assert!(
        !keys.contains("caph-image build"),
        "the build key stayed in the image: {keys}"
    );
    session.close().await;
    let action = client.delete_server(created.server.id).await.unwrap();
    client
        .wait_for_action(&action, &wait, &mut |_| {})
        .await
        .unwrap();
    client.delete_ssh_key(key.id).await.unwrap();
}
