//! Cluster API Provider Hetzner's bare-metal provisioning, replayed step for step from its source
//! against the Robot simulator, a simulated rescue system and the installed node, with a tarball
//! built by `build tarball`; then the installed drive's first boot for real, under QEMU, judged
//! as `caph-image verify` judges a node.
//!
//! The source is syself/cluster-api-provider-hetzner at 1c4fe745f3bf5b22b94d4dddd6c4b3b98f6770fc:
//! the state machine in `pkg/services/baremetal/host/host.go` (and `utils.go`), the commands in
//! `pkg/services/baremetal/client/ssh/ssh_client.go`. Each step below names the function it
//! reproduces. The commands are CAPH's as it sends them over SSH; the controller's own
//! bookkeeping (conditions, events, retries with back-off) is not reproduced. CAPH's fork of
//! installimage is the vendored one (`../shared/vendor/installimage/`), run for real.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_boot::tarball::TarballContents;
use caph_boot::verify::{InstalledDiskRequest, verify_installed_disk};
use caph_core::backend::{Context, NoProgress};
use caph_core::checks::{FindingStatus, NodePromise};
use caph_core::firstboot::{self, Expectations, HostKeys, MachineId};
use caph_sim::installimage::InstalledDisk;
use tokio_util::sync::CancellationToken;

use caph_robot::client::{Credentials, ResetType, RobotClient};
use caph_sim::mirror::Mirror;
use caph_sim::real_installimage::InstallimageKind;
use caph_sim::robot::{RobotDrive, RobotServer, RobotSim, RobotSimConfig, TimeMode};
use caph_ssh::{ConnectConfig, HostKeyPolicy, KeyPair, Session, TofuPin, connect_when_ready};

use crate::installed_disk::MountedSystem;

const USER: &str = "caph-replay";
const PASSWORD: &str = "caph-replay-secret";
const SERVER: u64 = 7001;
/// The node's name, as CAPH derives it from the machine (`scope.Hostname()`).
const HOSTNAME: &str = "bm-e2e-cluster-md-0-7001";
/// The root device hint of the HetznerBareMetalHost: the WWN of the drive to install on.
const ROOT_WWN: &str = "0x5002538e4f0a7001";
/// host.go's `PostInstallScriptFinished`.
const POST_INSTALL_SCRIPT_FINISHED: &str = "POST_INSTALL_SCRIPT_FINISHED";

/// `ssh_client.go`'s `runSSH`: one command, its output and exit status.
async fn run(session: &Session, command: &str) -> caph_ssh::CapturedOutput {
    session
        .exec_capture(command)
        .await
        .unwrap_or_else(|error| panic!("`{command}`: {error}"))
}

/// How CAPH's SSH client connects: as root with `key`, trusting the host key it first sees (a
/// fresh pin each time), waiting up to `deadline` for the server.
fn root_on_first_use(address: SocketAddr, key: &KeyPair, deadline: Duration) -> ConnectConfig {
    let mut config = ConnectConfig::new(
        address,
        "root",
        key.clone(),
        HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
    );
    config.deadline = deadline;
    config
}

async fn connect(address: SocketAddr, key: &KeyPair) -> Session {
    let config = root_on_first_use(address, key, Duration::from_secs(300));
    connect_when_ready(&config, &mut |_| {})
        .await
        .expect("the server answers SSH")
}

/// Replays CAPH's provisioning of a dedicated server with `tarball`.
pub async fn caph_provisions_a_node_from_the_tarball(dir: &Path, tarball: &Path) {
    let test = "CAPH's bare-metal provisioning, replayed";
    let fork = match crate::vendored_installimage(InstallimageKind::CaphFork) {
        Ok(fork) => fork,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            return;
        }
    };
    // CAPH uploads its own installimage: the rescue system needs no real one of its own.
    let (machines, robot_machines) = crate::rescue_install::robot_machines(None, "caph-replay");
    let mut server = RobotServer::new(SERVER, "caph-replay");
    // The root device by WWN, as CAPH's templates choose it, and a second, bigger drive that
    // the hint must not pick.
    server.drives = vec![
        RobotDrive {
            wwn: Some("0x5002538e4f0a7002".into()),
            ..RobotDrive::new("/dev/sda", 16 << 30)
        },
        RobotDrive {
            wwn: Some(ROOT_WWN.into()),
            ..RobotDrive::new("/dev/sdb", 8 << 30)
        },
    ];
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
    let robot = RobotClient::new(&sim.url(), Credentials::new(USER, PASSWORD)).unwrap();
    let address: SocketAddr = format!("{}:22", sim.state().servers[0].ip).parse().unwrap();
    // The image's URL: a server on this machine, as the controller's image URL would be.
    // The template's `image.name` is the tarball's name without its suffix: installimage reads
    // the distribution, release and architecture from it (and refuses a name without them).
    let file_name = tarball
        .file_name()
        .and_then(|name| name.to_str())
        .expect("the tarball has a UTF-8 file name");
    let image_name = file_name
        .strip_suffix(".tar.gz")
        .expect("build tarball's default output is a .tar.gz");
    let mirror = Mirror::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        [(
            format!("images/{file_name}"),
            std::fs::read(tarball).expect("the tarball"),
        )]
        .into(),
    )
    .await
    .expect("the image server starts");
    let image_url = format!("{}/images/{file_name}", mirror.url());

    // host.go `ensureSSHKey`: the rescue SSH key (from the cluster's secret) in Robot.
    let rescue_key = KeyPair::generate_ed25519("caph rescue key").unwrap();
    let robot_key = robot
        .create_key("caph-replay", &rescue_key.public_key().to_openssh())
        .await
        .unwrap();
    // host.go `ensureRescueMode` and `actionPreparing`: rescue activated with that key, then
    // a hardware reset into it.
    robot
        .activate_rescue(SERVER, std::slice::from_ref(&robot_key.fingerprint))
        .await
        .unwrap();
    robot.reset(SERVER, ResetType::Hardware).await.unwrap();
    let rescue = connect(address, &rescue_key).await;

    // host.go `actionRegistering`: `GetHostName` says the rescue system is up.
    assert_eq!(run(&rescue, "hostname").await.stdout.trim(), "rescue");
    // host.go `getHardwareDetails` with ssh_client.go's commands: RAM, CPU, and the drives,
    // whose WWNs the root device hints are checked against
    // (`validateRootDeviceWwnsAreSubsetOfExistingWwns`).
    let ram = run(&rescue, "grep MemTotal /proc/meminfo | awk '{print $2}'").await;
    assert!(
        ram.stdout.trim().parse::<u64>().is_ok_and(|kib| kib > 0),
        "{ram:?}"
    );
    let arch = run(
        &rescue,
        r#"lscpu | grep "Architecture:" | awk '{print $2}'"#,
    )
    .await;
    assert_eq!(arch.stdout.trim(), std::env::consts::ARCH);
    let threads = run(
        &rescue,
        r#"lscpu | grep "CPU(s):" | head -1 |  awk '{ print $2}'"#,
    )
    .await;
    assert!(threads.stdout.trim().parse::<u32>().is_ok(), "{threads:?}");
    let storage_command = r#"lsblk -b -P -o "NAME,TYPE,SIZE,VENDOR,MODEL,SERIAL,WWN,HCTL,ROTA""#;
    let storage = run(&rescue, storage_command).await;
    assert_eq!(storage.exit_code, 0, "{storage:?}");
    // obtainHardwareDetailsStorage: `KEY="value"` pairs a line, disks only.
    let disks: Vec<(String, String)> = storage
        .stdout
        .lines()
        .filter(|line| line.contains(r#"TYPE="disk""#))
        .map(|line| {
            let field = |key: &str| {
                line.split(&format!("{key}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("NAME"), field("WWN"))
        })
        .collect();
    assert_eq!(
        disks,
        [
            ("sda".to_string(), "0x5002538e4f0a7002".to_string()),
            ("sdb".to_string(), ROOT_WWN.to_string())
        ],
        "{}",
        storage.stdout
    );

    // host.go `createAutoSetupInput`: the image is downloaded (ssh_client.go `DownloadImage`),
    // to `/root/<name>.<suffix of the URL>` (`Image.GetDetails`).
    let image_path = format!("/root/{image_name}.tar.gz");
    let downloaded = run(
        &rescue,
        &format!(r#"curl -sLo "{image_path}" "{image_url}""#),
    )
    .await;
    assert_eq!(downloaded.exit_code, 0, "{downloaded:?}");
    // `getDeviceNames`: the drives whose WWN is among the root device hints.
    let device_names: Vec<&str> = disks
        .iter()
        .filter(|(_, wwn)| wwn == ROOT_WWN)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(device_names, ["sdb"]);
    // utils.go `buildAutoSetup`, for the template's installImage (no RAID, /boot and /).
    let autosetup = format!(
        "DRIVE1 /dev/{}\n\nHOSTNAME {HOSTNAME}\nSWRAID 0\n\nPART /boot ext4 1024M\nPART / ext4 all\n\n\n\nIMAGE {image_path}",
        device_names[0]
    );
    // ssh_client.go `CreateAutoSetup`.
    let created = run(
        &rescue,
        &format!("cat << 'EOF_VIA_SSH' > /autosetup\n{autosetup}\nEOF_VIA_SSH"),
    )
    .await;
    assert_eq!(created.exit_code, 0, "{created:?}");
    // host.go `actionImageInstallingStartBackgroundProcess`: the post-install script with the
    // bootstrap data as the NoCloud seed, ending with the marker; ssh_client.go
    // `CreatePostInstallScript`.
    // The bootstrap: the probe `verify` sends, shaped like the kubeadm bootstrap provider's
    // (files to write, then commands; the command leaves a marker with the node's own hostname).
    let bootstrap_user_data = firstboot::probe_user_data("");
    let post_install = format!(
        "#!/bin/bash\n\n\n# install cloud-init data\n\ntrap 'echo \"ERROR: A command has failed. Exiting the script. Line was ($0:$LINENO): $(sed -n \"${{LINENO}}p\" \"$0\")\"; exit 3' ERR\nset -Eeuo pipefail\n\nmkdir -p /var/lib/cloud/seed/nocloud-net\n\ncat << 'EOF_POST_INSTALL_SCRIPT' > /var/lib/cloud/seed/nocloud-net/meta-data\nlocal-hostname: {HOSTNAME}\nEOF_POST_INSTALL_SCRIPT\n\ncat << 'EOF_POST_INSTALL_SCRIPT' > /var/lib/cloud/seed/nocloud-net/user-data\n{bootstrap_user_data}\nEOF_POST_INSTALL_SCRIPT\n\necho \"{POST_INSTALL_SCRIPT_FINISHED}\"\n# end of install cloud-init data\n"
    );
    let created = run(
        &rescue,
        &format!("cat << 'EOF_VIA_SSH' > /root/post-install.sh\n{post_install}\nEOF_VIA_SSH"),
    )
    .await;
    assert_eq!(created.exit_code, 0, "{created:?}");
    assert_eq!(
        run(&rescue, "chmod +x /root/post-install.sh")
            .await
            .exit_code,
        0
    );
    // ssh_client.go `UntarTGZ`: CAPH's installimage, sent as base64 and unpacked in /root.
    let archive = std::fs::read(&fork.path).expect("the fork's archive");
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&archive)
    };
    let unpacked = run(
        &rescue,
        &format!("cd /root && echo {encoded} | base64 -d | tar -xzf-"),
    )
    .await;
    assert_eq!(unpacked.exit_code, 0, "{unpacked:?}");
    // ssh_client.go `ExecuteInstallImage`: a wrapper that answers the 20-second wait, started
    // in the background.
    let wrapper = "#!/bin/bash\nexport TERM=xterm\n\n# don't wait 20 seconds before starting: echo \"x\"\necho \"x\" | /root/hetzner-installimage/installimage -a -c /autosetup -x /root/post-install.sh";
    for command in [
        format!("cat << 'EOF_VIA_SSH' > /root/installimage-wrapper.sh\n{wrapper}\nEOF_VIA_SSH"),
        "chmod +x /root/installimage-wrapper.sh . ".to_string(),
        "nohup /root/installimage-wrapper.sh >/root/installimage-wrapper.sh.log 2>&1 </dev/null &"
            .to_string(),
    ] {
        let output = run(&rescue, &command).await;
        assert_eq!(output.exit_code, 0, "`{command}`: {output:?}");
    }
    // ssh_client.go `GetInstallImageState`, polled (host.go `actionImageInstalling`) until
    // installimage no longer runs and its log exists.
    let started = Instant::now();
    loop {
        let running = run(&rescue, "ps aux| grep installimage | grep -v grep; true").await;
        let logged = run(&rescue, "[ -e /root/installimage-wrapper.sh.log ]").await;
        if running.stdout.trim().is_empty() && logged.exit_code == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "installimage still runs after 15 minutes"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{test}: CAPH's installimage took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // ssh_client.go `GetResultOfInstallImage`; host.go `actionImageInstallingFinished` wants
    // the post-install marker in it.
    let debug = run(&rescue, "cat /root/debug.txt").await.stdout;
    let log = run(&rescue, "cat /root/installimage-wrapper.sh.log")
        .await
        .stdout;
    assert!(
        log.contains("INSTALLATION COMPLETE") && log.contains(POST_INSTALL_SCRIPT_FINISHED),
        "{log}\n{debug}"
    );
    // ssh_client.go `Reboot` (its connection may end without an exit status).
    let _ = rescue.exec_capture("reboot").await;
    rescue.close().await;

    // host.go `actionEnsureProvisioned`: as root with the same key (installimage copied the
    // activation's keys into the node), the hostname, then `cloud-init status` until done,
    // then the output log and the SIGTERM check.
    // CAPH treats a refused or lost connection as "not yet" and asks again: right after
    // `reboot` the rescue system may still answer, then goes away while the node boots.
    let started = Instant::now();
    let mut node = node_answering_as_itself(address, &rescue_key, started, test).await;
    let status = loop {
        let status = match node.exec_capture("cloud-init status").await {
            Ok(status) => status,
            // The same: an SSH error is "not yet" to CAPH (the simulated node's sshd may restart
            // while its first boot settles), and the next reconcile connects again.
            Err(error) => {
                eprintln!("{test}: `cloud-init status`: {error}; asking again");
                node.close().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                node = node_answering_as_itself(address, &rescue_key, started, test).await;
                continue;
            }
        };
        if status.exit_code != 0 {
            let why = run(
                &node,
                "cloud-init status --long; cat /run/cloud-init/result.json; \
                 grep -E 'WARNING|ERROR|Traceback|failed' /var/log/cloud-init.log | tail -40",
            )
            .await;
            panic!("cloud-init failed on the node: {}", why.stdout);
        }
        if !status.stdout.contains("status: running") && !status.stdout.contains("not run") {
            break status.stdout;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "cloud-init still runs: {}",
            status.stdout
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    assert_eq!(
        status.trim(),
        "status: done",
        "host.go checkCloudInitStatus"
    );
    let output = run(&node, "cat /var/log/cloud-init-output.log").await;
    assert_eq!(output.exit_code, 0, "{output:?}");
    assert!(
        output
            .stdout
            .contains(&format!("kubeadm join would run on {HOSTNAME}")),
        "{}",
        output.stdout
    );
    let sigterm = run(&node, r#"cat /var/log/cloud-init.log | grep "SIGTERM""#).await;
    assert_eq!(
        sigterm.exit_code, 1,
        "no SIGTERM in cloud-init.log: {sigterm:?}"
    );
    node.close().await;

    // The simulator ran the node off a copy of the system it read from the drive, so the drive
    // itself is as CAPH's installimage and post-install script left it: never booted.
    let disk_dir = robot_machines.disk_dir(SERVER).expect("the server's disks");
    let drive = dir.join("caph-node-sdb.img");
    let copied = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(disk_dir.join("sdb.img"))
        .arg(&drive)
        .status()
        .unwrap();
    assert!(copied.success());
    drop(sim);
    drop(robot_machines);
    drop(machines);
    first_boot_of_the_installed_drive(dir, tarball, &drive).await;
}

/// host.go `actionEnsureProvisioned`'s connection: as root with the rescue key (installimage
/// copied the activation's keys into the node), until the server answers as the node. CAPH treats
/// a refused or lost connection as "not yet" and asks again: right after `reboot` the rescue
/// system may still answer, then goes away while the node boots.
async fn node_answering_as_itself(
    address: SocketAddr,
    rescue_key: &KeyPair,
    started: Instant,
    test: &str,
) -> Session {
    loop {
        // A fresh pin each time: the rescue system's host key may still answer the first try.
        let config = root_on_first_use(address, rescue_key, Duration::from_secs(60));
        let node = match connect_when_ready(&config, &mut |_| {}).await {
            Ok(node) => node,
            Err(error) => {
                eprintln!("{test}: connecting: {error}; asking again");
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "the node did not answer within 5 minutes of the reboot"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        match node.exec_capture("hostname").await {
            Ok(output) if output.stdout.trim() == HOSTNAME => return node,
            Ok(output) => eprintln!("{test}: the server answers as {:?}", output.stdout.trim()),
            Err(error) => eprintln!("{test}: `hostname`: {error}; asking again"),
        }
        node.close().await;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the node did not answer as {HOSTNAME} within 5 minutes of the reboot"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The drive CAPH's flow installed boots for real under QEMU (BIOS, its own GRUB, the
/// tarball's kernel) with the seed CAPH's post-install script wrote, and is judged as
/// `caph-image verify` judges a node: the console, first boot (`caph_core::firstboot`: cloud-init
/// done without errors as a new instance, the probe's marker with the node's hostname, host keys
/// and machine id of its own) and the node checks the image promises (`caph_core::checks`).
async fn first_boot_of_the_installed_drive(dir: &Path, tarball: &Path, drive: &Path) {
    let test = "the CAPH-installed drive's first boot under QEMU";
    if let Some(reason) = caph_boot::verify::missing_requirements() {
        eprintln!("SKIPPED {test}: {reason}");
        return;
    }
    let (root_partition, installed_keys) = {
        let installed = MountedSystem::mount(drive, "/dev/sdb").await;
        for never in [firstboot::STATUS_JSON_PATH, "/var/lib/cloud/instance"] {
            assert!(
                !installed.root.join(never.trim_start_matches('/')).exists(),
                "{test}: {never} is on the drive: it booted before"
            );
        }
        let InstalledDisk::Images { partitions } = &installed.manifest.disk else {
            panic!("installed into a directory: {:?}", installed.manifest);
        };
        let root = partitions
            .iter()
            .find(|partition| partition.mount == "/")
            .expect("a root partition");
        let number: u32 = root
            .device
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or_else(|_| panic!("a partition number in {}", root.device));
        (number, host_public_keys(&installed.root))
    };
    assert!(!installed_keys.is_empty(), "installimage made host keys");

    let contents = TarballContents::read(tarball, &CancellationToken::new())
        .await
        .expect("the tarball reads");
    let (release, modules, sysctls) = contents.promise_files();
    let context = Context {
        progress: Arc::new(NoProgress),
        cancel: CancellationToken::new(),
        build_id: "caph-replay".to_string(),
    };
    let started = Instant::now();
    let report = verify_installed_disk(
        &context,
        &InstalledDiskRequest {
            disk: drive.to_path_buf(),
            root_partition,
            expectations: Expectations {
                hostname: HOSTNAME.to_string(),
                // host.go's meta-data names no instance id: cloud-init's NoCloud source then
                // calls the instance `nocloud`.
                instance_id: "nocloud".to_string(),
                probe: true,
                host_keys: HostKeys::NotAnyOf(contents.host_public_keys()),
                machine_id: MachineId::Not(contents.machine_id()),
            },
            promise: NodePromise::from_image_files(release, modules, sysctls),
            work_dir: dir.join("first-boot-work"),
            console_log: Some(dir.join("caph-node-console.log")),
            boot_timeout: FIRST_BOOT_DEADLINE,
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{test}: {error}"));
    eprintln!(
        "{test}: over after {:.0}s (VM {:.0}s)",
        started.elapsed().as_secs_f64(),
        report.boot_duration.as_secs_f64()
    );
    let table: Vec<String> = report
        .findings
        .iter()
        .map(|finding| {
            format!(
                "{} {}: {}",
                finding.name,
                finding.status.word(),
                finding.detail
            )
        })
        .collect();
    let mut failed: Vec<&str> = report
        .findings
        .iter()
        .filter(|finding| finding.status != FindingStatus::Ok)
        .map(|finding| finding.name.as_str())
        .collect();
    failed.sort_unstable();
    let mut known: Vec<&str> = KNOWN_DRIVE_FAILURES.iter().map(|(name, _)| *name).collect();
    known.sort_unstable();
    assert_eq!(failed, known, "{test}:\n{}", table.join("\n"));
    for wanted in [
        "first-boot",
        "cloud-init-status",
        "bootstrap-marker",
        "machine-id-new",
    ] {
        assert!(
            report.findings.iter().any(|finding| finding.name == wanted),
            "{test}: no {wanted} finding:\n{}",
            table.join("\n")
        );
    }
    // cloud-init kept the host keys installimage made for this node (ssh_deletekeys false).
    let booted = MountedSystem::mount(drive, "/dev/sdb").await;
    assert_eq!(host_public_keys(&booted.root), installed_keys, "{test}");
}

/// How long the first boot may take: as `verify`'s default, fifteen minutes for an emulated
/// boot on two loaded cores.
const FIRST_BOOT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Findings that fail on this drive, with the reason: the end-to-end tarball's known ones.
const KNOWN_DRIVE_FAILURES: &[(&str, &str)] = crate::verify::KNOWN_TARBALL_FAILURES;

/// The public host keys below `root`, sorted.
fn host_public_keys(root: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(root.join("etc/ssh"))
        .expect("/etc/ssh")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with("_key.pub"))
        .map(|entry| {
            std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    keys.sort();
    keys
}
