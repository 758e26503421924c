//! SshMachines driven directly: real sshd in a chrooted Debian root filesystem per machine,
//! reached with caph-ssh pinning the host key given through cloud-config.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_sim::host::{CloudInit, DiskSource, MachineHost, MachineSpec};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, Session, TofuPin, connect_when_ready};

fn machines(test: &str) -> Option<SshMachines> {
    let config = SshMachinesConfig {
        log: Some(Arc::new(|line: &str| eprintln!("[machines] {line}"))),
        ..Default::default()
    };
    match SshMachines::new(config) {
        Ok(machines) => Some(machines),
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            None
        }
    }
}

/// A cloud-config carrying the host key, the way the hcloud backend hands it to cloud-init.
fn cloud_config_with_host_key(host_key: &KeyPair) -> String {
    let pem = host_key.private_key_openssh().unwrap();
    let indented: String = pem
        .expose()
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        host_key.public_key().to_openssh()
    )
}

async fn connect(addr: SocketAddr, client: &KeyPair, policy: HostKeyPolicy) -> Session {
    let mut config = ConnectConfig::new(addr, "root", client.clone(), policy);
    config.deadline = Duration::from_secs(30);
    connect_when_ready(&config, &mut |_| {}).await.unwrap()
}

async fn run(session: &Session, command: &str) -> String {
    let output = session.exec_capture(command).await.unwrap();
    assert_eq!(output.exit_code, 0, "`{command}` failed: {}", output.stderr);
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_runs_commands_in_its_own_root_and_snapshots_carry_files() {
    let test = "machine_runs_commands_in_its_own_root_and_snapshots_carry_files";
    let Some(machines) = machines(test) else {
        return;
    };
    let instance_dir = machines.instance_dir().to_path_buf();
    let host_key = KeyPair::generate_ed25519("node-a host").unwrap();
    let client = KeyPair::generate_ed25519("build key").unwrap();

    let started = Instant::now();
    let info = machines
        .create(MachineSpec {
            server_id: 11,
            hostname: "node-a".to_owned(),
            disk: DiskSource::System {
                name: "debian-12".to_owned(),
                architecture: "x86".to_owned(),
            },
            authorized_keys: vec![client.public_key().to_openssh()],
            user_data: Some(cloud_config_with_host_key(&host_key)),
            cloud_init: CloudInit::Off,
        })
        .await
        .unwrap();
    eprintln!(
        "create (including any rootfs build) took {:.1?}",
        started.elapsed()
    );
    assert!(
        info.ipv4.is_loopback() && info.ipv4 != std::net::Ipv4Addr::LOCALHOST,
        "{}",
        info.ipv4
    );
    let addr = SocketAddr::from((info.ipv4, 22));
    assert!(
        TcpStream::connect(addr).is_err(),
        "a created machine starts powered off"
    );

    let started = Instant::now();
    machines.power_on(11).await.unwrap();
    let session = connect(addr, &client, HostKeyPolicy::Pinned(host_key.public_key())).await;
    eprintln!("power on + SSH connect took {:.1?}", started.elapsed());

    assert_eq!(run(&session, "hostname").await.trim(), "node-a");
    assert_eq!(run(&session, "cat /etc/hostname").await.trim(), "node-a");
    // Its own pid namespace and /proc: the machine's boot shell is the first process, as an
    // init would be, and sshd runs below it.
    assert_eq!(run(&session, "cat /proc/1/comm").await.trim(), "sh");
    assert!(run(&session, "ps -o comm= --ppid 1").await.contains("sshd"));
    // A Debian root filesystem with what a provisioning plan needs.
    let tools = run(
        &session,
        "cat /etc/debian_version; command -v apt-get curl gpg modprobe sysctl ip systemctl",
    )
    .await;
    assert!(
        tools.contains("/usr/bin/apt-get") && tools.contains("systemctl"),
        "{tools}"
    );
    // systemctl works offline in the chroot, as provisioning plans use it.
    run(
        &session,
        "systemctl enable systemd-networkd.service 2>&1 && test -L /etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    )
    .await;
    // A loopback mirror served by the test is reachable from inside the machine.
    let mirror = serve_once("deb packages would be here\n").await;
    assert_eq!(
        run(&session, &format!("curl -fsS http://{mirror}/pool/file")).await,
        "deb packages would be here\n"
    );
    assert!(
        run(&session, "test -c /dev/null && echo ok")
            .await
            .contains("ok")
    );
    assert!(!run(&session, "cat /etc/resolv.conf").await.is_empty());
    // The chroot: a file written over SSH lands in this machine's root filesystem on the host.
    run(&session, "echo written-by-node-a > /root/marker").await;
    let root = machines.machine_root(11).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("root/marker")).unwrap(),
        "written-by-node-a\n"
    );
    assert!(
        !Path::new("/root/marker").exists()
            || std::fs::read_to_string("/root/marker").unwrap() != "written-by-node-a\n"
    );

    machines.power_off(11).await.unwrap();
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(
        session.exec_capture("true").await.is_err(),
        "the old session died with the machine"
    );

    let started = Instant::now();
    let bytes = machines.snapshot(11, 900).await.unwrap();
    eprintln!(
        "snapshot of {} MB took {:.1?}",
        bytes / 1_000_000,
        started.elapsed()
    );
    assert!(
        bytes > 50_000_000,
        "a Debian rootfs is more than 50 MB, got {bytes}"
    );

    let info_b = machines
        .create(MachineSpec {
            server_id: 12,
            hostname: "node-b".to_owned(),
            disk: DiskSource::Snapshot { image_id: 900 },
            authorized_keys: vec![client.public_key().to_openssh()],
            user_data: None,
            cloud_init: CloudInit::Off,
        })
        .await
        .unwrap();
    assert_ne!(info_b.ipv4, info.ipv4);
    machines.power_on(12).await.unwrap();
    // No host key in user data: a fresh one, trusted on first use.
    let pin = TofuPin::new();
    let session_b = connect(
        SocketAddr::from((info_b.ipv4, 22)),
        &client,
        HostKeyPolicy::TrustOnFirstUse(pin.clone()),
    )
    .await;
    assert!(
        !pin.recorded().unwrap().same_key(&host_key.public_key()),
        "a fresh host key, not node-a's"
    );
    assert_eq!(
        run(&session_b, "cat /root/marker").await,
        "written-by-node-a\n"
    );
    assert_eq!(run(&session_b, "hostname").await.trim(), "node-b");

    // Deleting the source server does not affect the snapshot or its copy.
    machines.delete(11).await.unwrap();
    assert!(!root.exists());
    assert_eq!(
        run(&session_b, "cat /root/marker").await,
        "written-by-node-a\n"
    );
    machines.delete(12).await.unwrap();
    machines.delete_image(900).await.unwrap();
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((info_b.ipv4, 22)), Duration::from_secs(2))
            .is_err()
    );

    drop(machines);
    assert!(
        !instance_dir.exists(),
        "dropping SshMachines removes its directory"
    );
    assert!(processes_mentioning(&instance_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_running_machines_leaves_nothing_behind() {
    let test = "dropping_running_machines_leaves_nothing_behind";
    let Some(machines) = machines(test) else {
        return;
    };
    let instance_dir = machines.instance_dir().to_path_buf();
    let client = KeyPair::generate_ed25519("k").unwrap();
    let info = machines
        .create(MachineSpec {
            server_id: 21,
            hostname: "left-running".to_owned(),
            disk: DiskSource::System {
                name: "ubuntu-24.04".to_owned(),
                architecture: "x86".to_owned(),
            },
            authorized_keys: vec![client.public_key().to_openssh()],
            user_data: Some("#!/bin/sh\necho not a cloud-config\n".to_owned()),
            cloud_init: CloudInit::Off,
        })
        .await
        .unwrap();
    machines.power_on(21).await.unwrap();
    let session = connect(
        SocketAddr::from((info.ipv4, 22)),
        &client,
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    )
    .await;
    assert_eq!(run(&session, "echo up").await.trim(), "up");
    assert!(!processes_mentioning(&instance_dir).is_empty());

    drop(machines);
    let until = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&instance_dir).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        processes_mentioning(&instance_dir).is_empty(),
        "no sshd survives"
    );
    assert!(!instance_dir.exists());
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((info.ipv4, 22)), Duration::from_secs(2))
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_run_are_swept() {
    let test = "leftovers_of_a_killed_run_are_swept";
    let Some(first) = machines(test) else { return };
    let state_dir = first.instance_dir().parent().unwrap().to_path_buf();
    drop(first);
    // What a SIGKILLed run leaves: an instance directory whose owner process is gone.
    let stale = state_dir.join("run-killed-test");
    std::fs::create_dir_all(stale.join("machines/5/root/etc")).unwrap();
    std::fs::write(stale.join("owner"), "4194300 12345\n").unwrap();
    let _second = machines(test).unwrap();
    assert!(!stale.exists(), "swept");
}

/// Set in a re-run of this test binary as an unprivileged user: the file to report to.
const UNPRIVILEGED_REPORT_ENV: &str = "CAPH_SIM_UNPRIVILEGED_REPORT";

#[test]
fn construction_without_prerequisites_says_what_is_missing() {
    if let Some(report) = std::env::var_os(UNPRIVILEGED_REPORT_ENV) {
        // The re-run as `nobody`: report what construction says.
        let message = match SshMachines::new(SshMachinesConfig::default()) {
            Ok(_) => "constructed without root".to_owned(),
            Err(error) => error.to_string(),
        };
        std::fs::write(report, message).unwrap();
        return;
    }

    // A state directory that breaks sshd's chroot rule (under /tmp, world-writable) is refused
    // with the reason, whoever runs this.
    let dir = tempfile::tempdir().unwrap();
    let config = SshMachinesConfig {
        state_dir: dir.path().join("state"),
        ..Default::default()
    };
    let message = SshMachines::new(config).unwrap_err().to_string();
    assert!(
        message.contains("group- or world-writable") || message.contains("need"),
        "{message}"
    );

    // Without root: this binary again, as `nobody`, through util-linux's setpriv.
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    if !is_root || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!(
            "SKIPPED construction_without_prerequisites_says_what_is_missing (as nobody): needs root and setpriv"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let report = dir.path().join("report");
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "construction_without_prerequisites_says_what_is_missing",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED_REPORT_ENV, &report)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the unprivileged re-run failed: {status}");
    let message = std::fs::read_to_string(&report).unwrap();
    assert!(
        message.starts_with("simulated SSH machines need: root (running as uid 65534)"),
        "{message}"
    );
    eprintln!("as nobody: {message}");
}

/// A one-request HTTP server on 127.0.0.1, standing in for a test's package mirror.
async fn serve_once(body: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = stream.read(&mut request).await.unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
    });
    addr
}

/// Processes whose command line mentions `path` (machines' unshare/sshd carry their paths).
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cloud_config_host_keys_are_refused_at_create() {
    let test = "bad_cloud_config_host_keys_are_refused_at_create";
    let Some(machines) = machines(test) else {
        return;
    };
    let host_key = KeyPair::generate_ed25519("host").unwrap();
    let other = KeyPair::generate_ed25519("other").unwrap();
    let pem = host_key.private_key_openssh().unwrap();
    let indented: String = pem
        .expose()
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    let spec = |user_data: String| MachineSpec {
        server_id: 51,
        hostname: "bad".to_owned(),
        disk: DiskSource::System {
            name: "debian-12".to_owned(),
            architecture: "x86".to_owned(),
        },
        authorized_keys: Vec::new(),
        user_data: Some(user_data),
        cloud_init: CloudInit::Off,
    };

    // The public half of another key: pinning would fail later for no visible reason.
    let mismatched = format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        other.public_key().to_openssh()
    );
    let error = machines
        .create(spec(mismatched))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ssh_keys.ed25519_public does not belong to ssh_keys.ed25519_private"),
        "{error}"
    );

    let garbage = "#cloud-config\nssh_keys:\n  ed25519_private: not a key\n".to_owned();
    let error = machines
        .create(spec(garbage))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ssh_keys.ed25519_private is not a usable private key"),
        "{error}"
    );

    let broken_yaml = "#cloud-config\nssh_keys: [unclosed\n".to_owned();
    let error = machines
        .create(spec(broken_yaml))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not valid YAML"), "{error}");

    // Nothing of the refused machines is left, and the id is free for a good one.
    assert!(!machines.instance_dir().join("machines/51").exists());
    assert!(machines.machine_root(51).is_none());
}

/// Mount points of overlay filesystems at or below `dir`, from this process's mountinfo.
fn overlays_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains(" - overlay "))
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_share_read_only_layers_and_never_see_each_others_writes() {
    let test = "machines_share_read_only_layers_and_never_see_each_others_writes";
    let Some(machines) = machines(test) else {
        return;
    };
    let instance_dir = machines.instance_dir().to_path_buf();
    let client = KeyPair::generate_ed25519("layers").unwrap();
    let spec = |server_id: u64, disk: DiskSource| MachineSpec {
        server_id,
        hostname: format!("layers-{server_id}"),
        disk,
        authorized_keys: vec![client.public_key().to_openssh()],
        user_data: None,
        cloud_init: CloudInit::Off,
    };
    let debian = || DiskSource::System {
        name: "debian-12".to_owned(),
        architecture: "x86".to_owned(),
    };
    let mut sessions = Vec::new();
    for server_id in [21, 22] {
        let started = Instant::now();
        let info = machines.create(spec(server_id, debian())).await.unwrap();
        eprintln!("create {server_id} took {:.1?}", started.elapsed());
        machines.power_on(server_id).await.unwrap();
        let session = connect(
            SocketAddr::from((info.ipv4, 22)),
            &client,
            HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
        )
        .await;
        sessions.push(session);
    }
    // Each disk is an overlay of the cached image with an upper layer of its own.
    assert_eq!(overlays_under(&instance_dir).len(), 2);
    run(
        &sessions[0],
        "echo a > /root/only-on-21 && rm /etc/debian_version",
    )
    .await;
    assert_eq!(
        run(
            &sessions[1],
            "test -e /root/only-on-21 && echo file || echo no-file; test -s /etc/debian_version && echo version"
        )
        .await,
        "no-file\nversion\n",
        "22 sees neither 21's new file nor its deletion"
    );
    assert!(
        !machines
            .machine_root(22)
            .unwrap()
            .join("root/only-on-21")
            .exists()
    );

    // A snapshot of 21 carries its writes and its deletions; a server made from it writes on
    // its own layer, which neither 21 nor the snapshot sees.
    machines.power_off(21).await.unwrap();
    machines.snapshot(21, 950).await.unwrap();
    let info = machines
        .create(spec(23, DiskSource::Snapshot { image_id: 950 }))
        .await
        .unwrap();
    machines.power_on(23).await.unwrap();
    let session = connect(
        SocketAddr::from((info.ipv4, 22)),
        &client,
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    )
    .await;
    assert_eq!(
        run(
            &session,
            "cat /root/only-on-21; test -e /etc/debian_version || echo gone"
        )
        .await,
        "a\ngone\n"
    );
    run(&session, "echo c > /root/only-on-23").await;
    assert!(
        !machines
            .machine_root(21)
            .unwrap()
            .join("root/only-on-23")
            .exists()
    );
    // Deleting the snapshot leaves the server made from it whole (as on Hetzner); its layer
    // goes with the last server standing on it.
    machines.delete_image(950).await.unwrap();
    assert_eq!(run(&session, "cat /root/only-on-21").await, "a\n");
    assert!(instance_dir.join("images/950").exists());
    machines.delete(23).await.unwrap();
    assert!(!instance_dir.join("images/950").exists());
    machines.delete(21).await.unwrap();
    machines.delete(22).await.unwrap();
    assert!(overlays_under(&instance_dir).is_empty());
    drop(machines);
    assert!(!instance_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_servers_own_cloud_init_runs_its_user_data_at_boot() {
    let test = "a_cloud_servers_own_cloud_init_runs_its_user_data_at_boot";
    let Some(machines) = machines(test) else {
        return;
    };
    let client = KeyPair::generate_ed25519("first boot").unwrap();
    let spec = |server_id: u64, disk: DiskSource, user_data: &str| MachineSpec {
        server_id,
        hostname: format!("cloud-{server_id}"),
        disk,
        authorized_keys: vec![client.public_key().to_openssh()],
        user_data: Some(user_data.to_owned()),
        cloud_init: CloudInit::UserData,
    };
    // A CAPH-like bootstrap: files to write, then commands that leave a marker.
    let user_data = |marker: &str| {
        format!(
            "#cloud-config\nwrite_files:\n  - path: /etc/caph-bootstrap\n    content: {marker}\nruncmd:\n  - [sh, -c, 'echo {marker} $(hostname) > /root/runcmd-marker']\n"
        )
    };
    let info = machines
        .create(spec(
            31,
            DiskSource::System {
                name: "debian-12".to_owned(),
                architecture: "x86".to_owned(),
            },
            &user_data("first"),
        ))
        .await
        .unwrap();
    machines.power_on(31).await.unwrap();
    let session = connect(
        SocketAddr::from((info.ipv4, 22)),
        &client,
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    )
    .await;
    // The machine's own cloud-init, run at boot as its systemd units would.
    let status = session
        .exec_capture("cloud-init status --wait --long")
        .await
        .unwrap();
    assert!(
        status.exit_code == 0 && status.stdout.contains("status: done"),
        "{}{}\n{}",
        status.stdout,
        status.stderr,
        run(
            &session,
            "grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 30"
        )
        .await
    );
    assert_eq!(
        run(&session, "cat /etc/caph-bootstrap").await.trim(),
        "first"
    );
    assert_eq!(
        run(&session, "cat /root/runcmd-marker").await.trim(),
        "first cloud-31"
    );
    assert_eq!(
        run(&session, "cloud-init query instance_id").await.trim(),
        "31"
    );
    let machine_id = run(&session, "cat /etc/machine-id").await;
    assert_eq!(machine_id.trim().len(), 32, "{machine_id}");
    // As a build's hygiene leaves it: no cloud-init state, no machine id.
    run(
        &session,
        "cloud-init clean --logs --seed && truncate -s 0 /etc/machine-id",
    )
    .await;
    machines.power_off(31).await.unwrap();
    machines.snapshot(31, 960).await.unwrap();

    // A server made from the snapshot is a new instance: its own user data runs, and it gets
    // a machine id of its own.
    let info = machines
        .create(spec(
            32,
            DiskSource::Snapshot { image_id: 960 },
            &user_data("second"),
        ))
        .await
        .unwrap();
    machines.power_on(32).await.unwrap();
    let session = connect(
        SocketAddr::from((info.ipv4, 22)),
        &client,
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    )
    .await;
    // `--wait` prints a dot a second while it waits.
    assert!(
        run(&session, "cloud-init status --wait")
            .await
            .trim_end()
            .ends_with("\nstatus: done")
            || run(&session, "cloud-init status").await.trim() == "status: done"
    );
    assert_eq!(
        run(&session, "cat /root/runcmd-marker").await.trim(),
        "second cloud-32"
    );
    assert_eq!(
        run(&session, "cloud-init query instance_id").await.trim(),
        "32"
    );
    let second_machine_id = run(&session, "cat /etc/machine-id").await;
    assert_eq!(second_machine_id.trim().len(), 32);
    assert_ne!(second_machine_id, machine_id);
    for server_id in [31, 32] {
        machines.delete(server_id).await.unwrap();
    }
    machines.delete_image(960).await.unwrap();
}
