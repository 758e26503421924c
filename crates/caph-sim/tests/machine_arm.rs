//! arm machines: an arm64 Debian root filesystem run through qemu-user (binfmt_misc), or, where
//! that is not installed, a create() error that says what to install.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_sim::host::{CloudInit, DiskSource, MachineHost, MachineSpec};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, TofuPin, connect_when_ready};

fn binfmt_aarch64_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .map(|text| text.starts_with("enabled"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_arm_runs_arm64_binaries_or_says_what_to_install() {
    let test = "machine_arm_runs_arm64_binaries_or_says_what_to_install";
    let config = SshMachinesConfig {
        log: Some(Arc::new(|line: &str| eprintln!("[machines] {line}"))),
        ..Default::default()
    };
    let machines = match SshMachines::new(config) {
        Ok(machines) => machines,
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    let client = KeyPair::generate_ed25519("arm build").unwrap();
    let started = Instant::now();
    let created = machines
        .create(MachineSpec {
            server_id: 31,
            hostname: "arm-builder".to_owned(),
            disk: DiskSource::System {
                name: "debian-12".to_owned(),
                architecture: "arm".to_owned(),
            },
            authorized_keys: vec![client.public_key().to_openssh()],
            user_data: None,
            cloud_init: CloudInit::Off,
        })
        .await;
    if std::env::consts::ARCH == "x86_64" && !binfmt_aarch64_enabled() {
        let error = created.unwrap_err().to_string();
        assert!(
            error.contains("qemu-user-static") || error.contains("update-binfmts"),
            "{error}"
        );
        assert!(!Path::new(&machines.instance_dir().join("machines/31")).exists());
        eprintln!("SKIPPED {test} (running arm64 binaries): {error}");
        return;
    }
    let info = created.unwrap();
    eprintln!(
        "arm create (including any rootfs build) took {:.1?}",
        started.elapsed()
    );
    machines.power_on(31).await.unwrap();
    let mut config = ConnectConfig::new(
        SocketAddr::from((info.ipv4, 22)),
        "root",
        client.clone(),
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    );
    config.deadline = Duration::from_secs(30);
    let session = connect_when_ready(&config, &mut |_| {}).await.unwrap();
    let output = session
        .exec_capture("uname -m; dpkg --print-architecture; hostname")
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, "aarch64\narm64\narm-builder\n");
    machines.delete(31).await.unwrap();
}
