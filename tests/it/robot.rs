//! `caph-image build robot` end to end: a tarball made by `build tarball` is installed through the
//! simulated Robot API and rescue system (real sshd, the server's drive a real block device) by
//! Hetzner's real installimage; the installed node is reached over SSH afterwards, the drive is
//! checked from outside, and it boots under QEMU through the GRUB installimage put on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caph_robot::client::{Credentials, RobotClient};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::real_installimage::InstallimageKind;
use caph_sim::robot::{
    RobotDrive, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig, SshRobotMachines, TimeMode,
};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, PublicKey, connect_when_ready};

const USER: &str = "robot-e2e";
const PASSWORD: &str = "robot-e2e-secret";
const SERVER: u64 = 321;

/// The caph-sim binary beside this test binary (`cargo test --workspace` builds it); it is the
/// rescue system's installimage.
fn caph_sim_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("caph-sim");
    binary.exists().then_some(binary)
}

/// Installs `tarball` (in `dir`) on a simulated dedicated server with the real binary and
/// Hetzner's installimage, logs in, checks the drive, and boots it under QEMU through GRUB.
pub async fn install_and_log_in(
    dir: &Path,
    spec_file: &str,
    tarball: &Path,
    kubernetes_version: &str,
) {
    let test = "build robot (after build tarball)";
    let Some(installimage) = caph_sim_binary() else {
        eprintln!("SKIPPED {test}: target/debug/caph-sim is not built (cargo build -p caph-sim)");
        return;
    };
    let real_installimage = match crate::vendored_installimage(InstallimageKind::Hetzner) {
        Ok(archive) => archive,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            return;
        }
    };
    let machines = match SshMachines::new(SshMachinesConfig::default()) {
        Ok(machines) => Arc::new(machines),
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
        machines: machines.clone(),
        real_installimage: Some(real_installimage),
        installimage_binary: installimage,
        rescue_packages: caph_sim::robot::RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        log: Some(Arc::new(|line: &str| eprintln!("[robot] {line}"))),
    }));
    let mut server = RobotServer::new(SERVER, "e2e-server");
    // Small sparse drives: the install writes real disk images.
    server.drives = vec![RobotDrive::new("/dev/sda", 6 << 30)];
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: vec![server],
        machines: robot_machines.clone(),
        ..Default::default()
    })
    .await
    .expect("the Robot simulator starts");

    // A key of our own, authorized on the installed node through Robot.
    let inspector = KeyPair::generate_ed25519("inspector").unwrap();
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).unwrap();
    let inspector_public = inspector.public_key().to_openssh();
    let key = client
        .create_key("inspector", &inspector_public)
        .await
        .unwrap();

    let tarball_arg = tarball.to_string_lossy().into_owned();
    let args = [
        "build",
        "robot",
        spec_file,
        "--server",
        "321",
        "--tarball",
        &tarball_arg,
        "--layout",
        "single-disk",
        "--hostname",
        "e2e-node-1",
        "--authorize-key",
        &key.fingerprint,
        "--poll-interval",
        "1s",
        "--reset-timeout",
        "300s",
        "--robot-endpoint",
        &sim.url(),
        "--no-progress",
        "--output",
        "json",
    ];
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_caph-image"))
        .args(args)
        .current_dir(dir)
        .env("HETZNER_ROBOT_USER", USER)
        .env("HETZNER_ROBOT_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("caph-image build robot\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the Robot password appears in the output"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["hostname"], "e2e-node-1");
    assert_ne!(
        report["host_key_fingerprint"], report["rescue_host_key_fingerprint"],
        "the installed system has its own host key"
    );
    assert!(
        report["machine_template"]
            .as_str()
            .unwrap()
            .contains("kind: HetznerBareMetalMachineTemplate")
    );
    assert!(
        !sim.state()
            .servers
            .iter()
            .any(|server| server.rescue_active),
        "the rescue activation is used up or removed"
    );

    // Log in to the installed node with our own key, pinning the host key the build reported.
    let address: SocketAddr = format!("{}:22", report["ip"].as_str().unwrap())
        .parse()
        .unwrap();
    let host_key = PublicKey::from_openssh(report["host_key"].as_str().unwrap()).unwrap();
    let session = connect_when_ready(
        &ConnectConfig::new(address, "root", inspector, HostKeyPolicy::Pinned(host_key)),
        &mut |_| {},
    )
    .await
    .unwrap();
    let check = |command: &'static str| {
        let session = &session;
        async move {
            let output = session.exec_capture(command).await.unwrap();
            assert_eq!(output.exit_code, 0, "`{command}`: {}", output.stderr);
            output.stdout
        }
    };
    assert_eq!(check("hostname").await.trim(), "e2e-node-1");
    assert_eq!(
        check("/usr/local/bin/kubelet --version").await.trim(),
        format!("Kubernetes v{kubernetes_version}")
    );
    assert!(
        check("cat /etc/caph-image-release")
            .await
            .contains("TARGET=tarball")
    );
    assert!(
        check("cat /etc/fstab").await.contains(" / "),
        "installimage wrote an fstab"
    );
    session.close().await;

    // Hetzner's installimage ran, for real.
    let ran = robot_machines.installimage_ran(SERVER).unwrap_or_default();
    assert!(
        ran.contains("Hetzner's installimage") && ran.contains("for real"),
        "{ran}"
    );

    // The drive as installimage left it, read from outside (the running node is a copy of it).
    let disk_dir = robot_machines
        .disk_dir(SERVER)
        .expect("the server's disks are on the host");
    let drive = disk_dir.join("sda.img");
    crate::installed_disk::check_real_install(
        &drive,
        "/dev/sda",
        &crate::installed_disk::Expected {
            hostname: "e2e-node-1",
            authorized_keys: &[inspector_public],
            rescue_host_key_fingerprints: &[report["rescue_host_key_fingerprint"]
                .as_str()
                .unwrap()
                .to_owned()],
        },
    )
    .await;
    // It boots: BIOS, GRUB from the MBR, kernel, initramfs, root by UUID, systemd, sshd.
    crate::boot::disk_boots_through_its_boot_loader(&drive, "e2e-node-1").await;
}
