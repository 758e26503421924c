//! The Robot simulator with real machines: rescue over real sshd with installimage in it, then the installed system booting with its own hostname and host key.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_sim::machine::{SshMachines, SshMachinesConfig};
use caph_sim::robot::{
    Power, RobotDrive, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig, SshRobotMachines,
    TimeMode,
};

#[path = "data/test_tarball.rs"]
mod test_tarball;

const USER: &str = "robot-user";
const PASSWORD: &str = "robot-secret";
/// How long a boot may take: the first rescue boot builds the rescue template (apt-get).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The `caph-sim` binary to copy into rescue systems (`CAPH_SIM_BINARY` overrides), if it
/// has the `installimage` entry point.
fn installimage_binary() -> Result<PathBuf, String> {
    let binary = std::env::var_os("CAPH_SIM_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_caph-sim")));
    let output = Command::new(&binary)
        .args(["installimage", "-h"])
        .output()
        .map_err(|error| format!("{}: {error}", binary.display()))?;
    if String::from_utf8_lossy(&output.stdout).contains("usage: installimage") {
        Ok(binary)
    } else {
        Err(format!(
            "{} has no `installimage` entry point (caph_sim::installimage::main_from_args)",
            binary.display()
        ))
    }
}

/// `ssh root@address command` with `key`, accepting whatever host key answers.
fn ssh(address: Ipv4Addr, key: &Path, command: &str, stdin: Option<&Path>) -> (i32, String) {
    let mut ssh = Command::new("ssh");
    ssh.args([
        "-i",
        &key.to_string_lossy(),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=3",
        &format!("root@{address}"),
        command,
    ]);
    match stdin {
        Some(path) => ssh.stdin(std::fs::File::open(path).expect("stdin file")),
        None => ssh.stdin(Stdio::null()),
    };
    let output = ssh.output().expect("ssh runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn host_key(address: Ipv4Addr) -> String {
    let output = Command::new("ssh-keyscan")
        .args(["-T", "3", "-t", "ed25519", &address.to_string()])
        .output()
        .expect("ssh-keyscan runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn wait_for_hostname(address: Ipv4Addr, key: &Path, hostname: &str) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let (code, output) = ssh(address, key, "hostname", None);
        if code == 0 && output.trim() == hostname {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{hostname} did not answer on {address} within {BOOT_TIMEOUT:?}: {output}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

async fn api(
    sim: &RobotSim,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> serde_json::Value {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.url()))
        .basic_auth(USER, Some(PASSWORD));
    if !form.is_empty() {
        request = request.form(form);
    }
    let response = request.send().await.expect("answer");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescue_installimage_and_the_installed_system_over_real_sshd() {
    let test = "rescue_installimage_and_the_installed_system_over_real_sshd";
    let binary = match installimage_binary() {
        Ok(binary) => binary,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            return;
        }
    };
    let machines = match SshMachines::new(SshMachinesConfig {
        log: Some(Arc::new(|line: &str| eprintln!("[machines] {line}"))),
        ..Default::default()
    }) {
        Ok(machines) => Arc::new(machines),
        Err(error) => {
            eprintln!("SKIPPED {test}: {error}");
            return;
        }
    };
    let work = tempfile::tempdir().expect("work dir");
    let client_key = work.path().join("id_ed25519");
    test_tarball::sh(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "client", "-f"])
            .arg(&client_key),
    );
    let public_key = std::fs::read_to_string(client_key.with_extension("pub")).expect("public key");
    let tarball = test_tarball::make_tarball(work.path());

    let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
        machines: machines.clone(),
        real_installimage: None,
        installimage_binary: binary,
        rescue_packages: caph_sim::robot::RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        log: Some(Arc::new(|line: &str| eprintln!("[robot] {line}"))),
    }));
    let mut server = RobotServer::new(321, "node-1");
    // Small drives: the install writes a real (sparse) disk image.
    server.drives = vec![RobotDrive {
        wwn: Some("0x5002538e40a1b2c3".into()),
        model: Some("SAMSUNG MZQL2512HCJQ-00A07".into()),
        serial: Some("S64ANS0T123456".into()),
        ..RobotDrive::new("/dev/sda", 3 << 30)
    }];
    let sim = RobotSim::start(RobotSimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        time: TimeMode::Scaled(0.01),
        servers: vec![server],
        machines: robot_machines.clone(),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let address = sim.state().servers[0].ip;

    let key = api(
        &sim,
        reqwest::Method::POST,
        "/key",
        &[("name", "client"), ("data", public_key.trim())],
    )
    .await;
    let fingerprint = key["key"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    api(
        &sim,
        reqwest::Method::POST,
        "/boot/321/rescue",
        &[("os", "linux"), ("authorized_key", &fingerprint)],
    )
    .await;
    api(&sim, reqwest::Method::POST, "/reset/321", &[("type", "hw")]).await;

    let started = Instant::now();
    let key_path = client_key.clone();
    tokio::task::spawn_blocking(move || wait_for_hostname(address, &key_path, "rescue"))
        .await
        .expect("rescue");
    eprintln!("rescue system up after {:.1?}", started.elapsed());
    let rescue = api(&sim, reqwest::Method::GET, "/boot/321/rescue", &[]).await;
    assert_eq!(rescue["rescue"]["active"], false, "one-shot");
    assert_eq!(sim.state().servers[0].power, Power::Rescue);
    let rescue_host_key = host_key(address);
    assert!(rescue_host_key.contains("ssh-ed25519"), "{rescue_host_key}");

    let (code, output) = ssh(
        address,
        &client_key,
        "test -x /root/.oldroot/nfs/install/installimage && echo present",
        None,
    );
    assert_eq!((code, output.trim()), (0, "present"));
    // What installimage needs for disk images, and the usual tools (best effort, listed).
    let (code, output) = ssh(address, &client_key, "command -v sfdisk mke2fs zstd", None);
    assert_eq!(code, 0, "{output}");
    let (_, output) = ssh(
        address,
        &client_key,
        "for tool in sgdisk parted wget bsdtar mdadm lvm systemd-nspawn hdparm blkid sha256sum curl gpg; do command -v $tool >/dev/null || echo missing $tool; done",
        None,
    );
    eprintln!(
        "rescue tools: {}",
        if output.trim().is_empty() {
            "all present"
        } else {
            output.trim()
        }
    );
    // The server's drive, and only it, as a block device: lsblk shows its identity, and no
    // host device (loop, virtio, zram) is listed or reachable.
    let (code, output) = ssh(
        address,
        &client_key,
        "lsblk -b -J -o NAME,TYPE,SIZE,WWN,MODEL,SERIAL,ROTA",
        None,
    );
    assert_eq!(code, 0, "{output}");
    let lsblk: serde_json::Value = serde_json::from_str(&output).expect("lsblk's JSON");
    assert_eq!(
        lsblk["blockdevices"],
        serde_json::json!([{
            "name": "sda", "type": "disk", "size": 3u64 << 30,
            "wwn": "0x5002538e40a1b2c3", "model": "SAMSUNG MZQL2512HCJQ-00A07",
            "serial": "S64ANS0T123456", "rota": false
        }]),
        "{output}"
    );
    let (code, output) = ssh(
        address,
        &client_key,
        "ls /sys/block /sys/class/block; find /dev -type b",
        None,
    );
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        output.split_whitespace().collect::<Vec<_>>(),
        ["/sys/block:", "sda", "/sys/class/block:", "sda", "/dev/sda"],
        "{output}"
    );
    // Partitions and filesystems made in the rescue system appear as udev would show them.
    // (parted, as installimage partitions with it: this kernel ignores the BLKRRPART re-read
    // that sfdisk asks for on a loop device, and takes parted's BLKPG calls at once.)
    let (code, output) = ssh(
        address,
        &client_key,
        "parted -s /dev/sda mklabel msdos mkpart primary ext4 1MiB 100% && for i in $(seq 50); do [ -b /dev/sda1 ] && break; sleep 0.1; done \
         && mkfs.ext4 -q -U 5b1c41d0-7f7c-4d9b-8f3e-2f0a8a6b9c01 /dev/sda1 \
         && for i in $(seq 50); do [ -L /dev/disk/by-uuid/5b1c41d0-7f7c-4d9b-8f3e-2f0a8a6b9c01 ] && break; sleep 0.1; done \
         && readlink /dev/disk/by-uuid/5b1c41d0-7f7c-4d9b-8f3e-2f0a8a6b9c01 && blkid -o value -s TYPE /dev/sda1 && lsblk -o NAME,TYPE,SIZE",
        None,
    );
    assert_eq!(code, 0, "{output}");
    eprintln!("{output}");
    assert!(output.starts_with("../../sda1\next4\n"), "{output}");
    // A fault first: the connection breaks off after 64 KiB of the upload.
    robot_machines.cut_next_connection_after(321, 64 * 1024);
    let (code, _) = ssh(
        address,
        &client_key,
        &format!("cat > /root/{}.partial", test_tarball::IMAGE_NAME),
        Some(&tarball),
    );
    assert_ne!(code, 0, "a cut upload fails");
    let (code, output) = ssh(
        address,
        &client_key,
        &format!("cat > /root/{}", test_tarball::IMAGE_NAME),
        Some(&tarball),
    );
    assert_eq!(code, 0, "{output}");
    let autosetup = work.path().join("autosetup");
    std::fs::write(
        &autosetup,
        format!("DRIVE1 /dev/sda\nHOSTNAME node-test\nPART /boot ext4 256M\nPART / ext4 all\nIMAGE /root/{}\n", test_tarball::IMAGE_NAME),
    )
    .expect("autosetup");
    assert_eq!(
        ssh(address, &client_key, "cat > /autosetup", Some(&autosetup)).0,
        0
    );
    let script = work.path().join("post-install.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\necho ran > /root/post-install-ran\necho POST_INSTALL_SCRIPT_FINISHED\n",
    )
    .expect("script");
    assert_eq!(
        ssh(
            address,
            &client_key,
            "cat > /root/post-install.sh && chmod +x /root/post-install.sh",
            Some(&script)
        )
        .0,
        0
    );
    let (code, output) = ssh(
        address,
        &client_key,
        "echo x | /root/.oldroot/nfs/install/installimage -a -c /autosetup -x /root/post-install.sh",
        None,
    );
    eprintln!("{output}");
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("INSTALLATION COMPLETE"), "{output}");
    assert!(output.contains("POST_INSTALL_SCRIPT_FINISHED"), "{output}");

    // `reboot` in the rescue system, as Cluster API Provider Hetzner does it.
    let (code, output) = ssh(address, &client_key, "reboot", None);
    assert_eq!(code, 0, "{output}");
    let key_path = client_key.clone();
    tokio::task::spawn_blocking(move || wait_for_hostname(address, &key_path, "node-test"))
        .await
        .expect("installed system");
    assert_eq!(sim.state().servers[0].power, Power::Disk);
    assert_eq!(sim.state().servers[0].os_reboots, 1);
    assert_eq!(sim.state().servers[0].resets, vec!["hw"]);
    let installed_host_key = host_key(address);
    assert!(installed_host_key.contains("ssh-ed25519"));
    assert_ne!(
        installed_host_key, rescue_host_key,
        "the installed system has its own host key"
    );
    let (code, output) = ssh(
        address,
        &client_key,
        "cat /root/post-install-ran /etc/hostname",
        None,
    );
    assert_eq!((code, output.as_str()), (0, "ran\nnode-test\n"));
    assert!(
        sim.state().servers[0].machine_errors.is_empty(),
        "{:?}",
        sim.state().servers[0].machine_errors
    );
    drop(sim);
    drop(robot_machines);
    drop(machines);
    // Every loop device the drives used is gone with the machines.
    let attached = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .output()
        .expect("losetup runs");
    let attached = String::from_utf8_lossy(&attached.stdout);
    assert!(
        !attached.contains("robot-disk-321"),
        "loop devices left attached: {attached}"
    );
}
