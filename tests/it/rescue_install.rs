//! installimage run in a simulated rescue system the way a person or a controller runs it there:
//! over real sshd, the tarball uploaded, `/autosetup` and a post-install script written, then
//! `installimage -a -c /autosetup -x ...`. Which installimage runs is the caller's choice: a real
//! one (Hetzner's, or the fork Cluster API Provider Hetzner uploads) or the simulation.
//!
//! Used where the full `build robot` flow adds nothing to what is checked: CAPH's fork on the
//! same tarball, and the simulated installimage beside the real one for the differential test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caph_robot::client::{Credentials, ResetType, RobotClient};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::real_installimage::InstallimageArchive;
use caph_sim::robot::{
    RobotDrive, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig, SshRobotMachines, TimeMode,
};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, TofuPin, connect_when_ready};

const USER: &str = "rescue-install";
const PASSWORD: &str = "rescue-install-secret";
const SERVER: u64 = 654;
/// The one drive of the server: big enough for a Debian node with /boot, sparse on the host.
const DRIVE_BYTES: u64 = 6 << 30;

/// What one run left: installimage's output and exit code, which installimage ran, and the
/// drive (a copy made while the server was off, so it outlives the simulator).
pub struct RescueInstall {
    pub exit_code: u32,
    pub output: String,
    /// The rescue system's line about the installimage it ran.
    pub ran: String,
    pub drive: PathBuf,
    /// The activation key, which installimage copies into the new system.
    pub authorized_key: String,
    pub rescue_host_key_fingerprint: String,
}

/// Simulated machines for dedicated servers whose rescue systems run the simulated installimage
/// of the `caph-sim` binary next to the test binary, handing over to `real` where the layout
/// allows; their log lines are printed with `[log_prefix]`.
pub fn robot_machines(
    real: Option<InstallimageArchive>,
    log_prefix: &'static str,
) -> (Arc<SshMachines>, Arc<SshRobotMachines>) {
    let installimage = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("caph-sim")))
        .filter(|binary| binary.exists())
        .expect("target/debug/caph-sim is built by cargo test --workspace");
    let machines = Arc::new(SshMachines::new(SshMachinesConfig::default()).expect("machines"));
    let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
        machines: machines.clone(),
        real_installimage: real,
        installimage_binary: installimage,
        rescue_packages: caph_sim::robot::RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        log: Some(Arc::new(move |line: &str| {
            eprintln!("[{log_prefix}] {line}")
        })),
    }));
    (machines, robot_machines)
}

/// Installs `tarball` with `autosetup` (its `IMAGE` line filled in here) and a post-install
/// script that leaves caph-image's marker, in the rescue system of a fresh simulated server whose
/// installimage hands over to `real` where the layout allows (`None`: always the simulation).
/// The drive is copied into `keep_dir`.
pub async fn install_in_rescue(
    tarball: &Path,
    autosetup: &str,
    hostname: &str,
    real: Option<InstallimageArchive>,
    keep_dir: &Path,
) -> RescueInstall {
    let (machines, robot_machines) = robot_machines(real, "rescue");
    let mut server = RobotServer::new(SERVER, "rescue-install");
    server.drives = vec![RobotDrive::new("/dev/sda", DRIVE_BYTES)];
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

    // The rescue system, as any client gets it: a key, an activation, a hardware reset.
    let key = KeyPair::generate_ed25519("rescue-install").unwrap();
    let authorized_key = key.public_key().to_openssh();
    let client = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).unwrap();
    let robot_key = client
        .create_key("rescue-install", &authorized_key)
        .await
        .unwrap();
    client
        .activate_rescue(SERVER, std::slice::from_ref(&robot_key.fingerprint))
        .await
        .unwrap();
    client.reset(SERVER, ResetType::Hardware).await.unwrap();
    let address: SocketAddr = format!("{}:22", sim.state().servers[0].ip).parse().unwrap();
    let pin = TofuPin::new();
    let session = connect_when_ready(
        &ConnectConfig::new(
            address,
            "root",
            key,
            HostKeyPolicy::TrustOnFirstUse(pin.clone()),
        ),
        &mut |_| {},
    )
    .await
    .expect("the rescue system answers");
    let rescue_host_key_fingerprint = session.host_key().fingerprint().to_string();

    let image_name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    let file = tokio::fs::File::open(tarball).await.unwrap();
    session
        .upload(file, &format!("/root/{image_name}"), 0o600, &mut |_| {})
        .await
        .expect("the tarball uploads");
    let config = format!("{autosetup}HOSTNAME {hostname}\nIMAGE /root/{image_name}\n");
    let post_install = format!(
        "#!/bin/bash\necho 'image=rescue-install hostname={hostname}' > /etc/caph-image-install\necho CAPH_IMAGE_POST_INSTALL_FINISHED\n"
    );
    for (path, content, mode) in [
        ("/autosetup", config.as_str(), 0o644),
        ("/root/post-install.sh", post_install.as_str(), 0o755),
    ] {
        session
            .upload(content.as_bytes(), path, mode, &mut |_| {})
            .await
            .unwrap();
    }
    let mut output = String::new();
    let exit_code = session
        .exec(
            "echo x | /root/.oldroot/nfs/install/installimage -a -c /autosetup -x /root/post-install.sh",
            &mut |line| {
                output.push_str(line.text);
                if !line.text.ends_with('\n') {
                    output.push('\n');
                }
            },
        )
        .await
        .expect("installimage runs");
    session.close().await;

    // The drive, once the rescue system is down (which also records which installimage ran).
    client.reset(SERVER, ResetType::Hardware).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ran = loop {
        if let Some(ran) = robot_machines.installimage_ran(SERVER) {
            break ran;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rescue system did not go down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let disk_dir = robot_machines.disk_dir(SERVER).expect("the server's disks");
    std::fs::create_dir_all(keep_dir).unwrap();
    let drive = keep_dir.join("sda.img");
    let copied = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(disk_dir.join("sda.img"))
        .arg(&drive)
        .status()
        .unwrap();
    assert!(copied.success(), "copying the drive");
    drop(sim);
    drop(robot_machines);
    drop(machines);
    RescueInstall {
        exit_code,
        output,
        ran,
        drive,
        authorized_key,
        rescue_host_key_fingerprint,
    }
}
