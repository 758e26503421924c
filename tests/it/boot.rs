//! The booted check: a disk the real installimage wrote starts under QEMU through its own boot
//! loader (BIOS, GRUB from the MBR, the tarball's kernel and initramfs, root by UUID) and comes
//! up to a login prompt with its hostname and sshd running.
//!
//! QEMU gets the whole disk and no `-kernel`, so GRUB as installimage (or `build hcloud
//! --from-tarball`) installed it is what boots. `-snapshot` keeps the disk as installed. The
//! console is the first serial port, where the tarball's kernel command line (`console=ttyS0`
//! last, see `caph_core::plan::GRUB_SERIAL_CONSOLE`) sends systemd's status lines and a login
//! prompt. A dedicated server's disk boots without a network card; a cloud server's disk boots on
//! what a Hetzner Cloud server shows (`HetznerCloudGuest`): its SMBIOS identity, a network card,
//! and the metadata service at 169.254.169.254.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A boot under emulation takes 30-70 s on two loaded cores; five minutes means it hangs.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// A cloud node's first boot does more under emulation: DHCP twice (cloud-init's own, then the
/// network it configured), cloud-init's three stages asking the metadata service, host keys made
/// (RSA among them); 100-300 s on two loaded cores, so ten minutes means it hangs.
const CLOUD_BOOT_DEADLINE: Duration = Duration::from_secs(600);

/// Units that may fail in the VM, with the reason: the VM is not the server the disk was
/// installed for.
pub const EXPECTED_FAILED_UNITS: &[(&str, &str)] = &[
    (
        "Raise network interfaces",
        "networking.service: the VM has no network card, and the installed configuration names the interface installimage found in the rescue system",
    ),
    (
        "containerd container runtime",
        "containerd.service: the end-to-end tarballs carry the mirror's stand-in containerd, which prints its version and exits (a real containerd runs in tests/it/runtime.rs)",
    ),
];

/// Drops terminal colour sequences, so console lines can be matched as text.
fn plain(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            text.push(c);
        }
    }
    text
}

/// Whether this machine can run the booted check; the reason when it cannot.
pub fn qemu_missing() -> Option<String> {
    (!Path::new(QEMU).exists())
        .then(|| format!("{QEMU} is missing (Debian package qemu-system-x86)"))
}

/// What a Hetzner Cloud server shows its system, for a disk that reads its data from Hetzner's
/// metadata service (cloud-init's Hetzner data source): the SMBIOS system manufacturer
/// `Hetzner` with the server id as serial number, a network card with the server's MAC address
/// whose DHCP answers on a link-local network, and `169.254.169.254:80` led by `socat` to a
/// server of the test on loopback (QEMU's user networking lets a guest reach a host address only
/// through such a forward; `restrict=on` lets the guest reach nothing else).
pub struct HetznerCloudGuest {
    /// The server id: SMBIOS serial and the metadata's `instance-id`.
    pub server_id: u64,
    /// The network card's MAC address (the metadata's network configuration names it).
    pub mac: String,
    /// The loopback port of the test's metadata server.
    pub metadata_port: u16,
    /// The private key (OpenSSH's format, in a file) whose public key the metadata service hands
    /// out: a cloud node has no ACPI power button handler (no logind without dbus), so the test
    /// logs in as root, as a user of the server would, and powers it off.
    pub ssh_key: std::path::PathBuf,
    /// The loopback port QEMU forwards to the guest's port 22.
    pub ssh_port: u16,
}

/// A free TCP port on 127.0.0.1 (for QEMU's forward to the guest's sshd).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Whether this machine can lead a guest to a metadata server; the reason when it cannot.
pub fn socat_missing() -> Option<String> {
    (!Path::new(SOCAT).exists()).then(|| format!("{SOCAT} is missing (Debian package socat)"))
}

const SOCAT: &str = "/usr/bin/socat";

/// A VM booting one raw disk, with its serial console read as it comes.
struct Vm {
    qemu: std::process::Child,
    console: mpsc::Receiver<Vec<u8>>,
    output: Vec<u8>,
    started: Instant,
    /// How long the boot may take.
    deadline: Duration,
    /// The QEMU monitor's socket, where a writable boot is asked to power off.
    monitor: Option<std::path::PathBuf>,
}

impl Vm {
    /// Starts QEMU on `disk`: through a throwaway overlay (`-snapshot`), or writing to the disk
    /// itself, with a monitor socket in `monitor_dir` to power it off cleanly.
    /// `cloud`: the guest is a Hetzner Cloud server (see [`HetznerCloudGuest`]); else it has no
    /// network card.
    fn start(disk: &Path, monitor_dir: Option<&Path>, cloud: Option<&HetznerCloudGuest>) -> Vm {
        let mut command = Command::new(QEMU);
        command
            // Emulation, not KVM: nested KVM on CI machines is missing or refuses host CPU models.
            .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
            .args(["-nographic", "-no-reboot"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
        match cloud {
            None => {
                command.args(["-nic", "none"]);
            }
            Some(guest) => {
                command
                    .arg("-smbios")
                    .arg(format!(
                        "type=1,manufacturer=Hetzner,product=vServer,serial={}",
                        guest.server_id
                    ))
                    .arg("-netdev")
                    // The metadata address must lie in the guest's network for QEMU to forward it.
                    .arg(format!(
                        "user,id=net0,net=169.254.0.0/16,host=169.254.0.1,dhcpstart=169.254.0.100,restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:{SOCAT} - TCP:127.0.0.1:{},hostfwd=tcp:127.0.0.1:{}-:22",
                        guest.metadata_port, guest.ssh_port
                    ))
                    .arg("-device")
                    .arg(format!("virtio-net-pci,netdev=net0,mac={}", guest.mac));
            }
        }
        let monitor = monitor_dir.map(|dir| dir.join("qemu-monitor.sock"));
        match &monitor {
            Some(socket) => {
                command
                    .arg("-monitor")
                    .arg(format!("unix:{},server,nowait", socket.display()));
            }
            // Writes go to a throwaway overlay: the disk stays as it was.
            None => {
                command.arg("-snapshot");
            }
        }
        let mut qemu = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu starts");
        let mut stdout = qemu.stdout.take().unwrap();
        // Chunks, not lines: the login prompt ends without a newline.
        let (chunks, console) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = stdout.read(&mut buffer) {
                if count == 0 || chunks.send(buffer[..count].to_vec()).is_err() {
                    break;
                }
            }
        });
        Vm {
            qemu,
            console,
            output: Vec::new(),
            started: Instant::now(),
            deadline: if cloud.is_some() {
                CLOUD_BOOT_DEADLINE
            } else {
                BOOT_DEADLINE
            },
            monitor,
        }
    }

    /// Reads the console until every one of `wanted` has appeared, or the boot deadline passes;
    /// whether they all did.
    fn wait_for(&mut self, wanted: &[&str]) -> bool {
        loop {
            let text = String::from_utf8_lossy(&self.output);
            if wanted.iter().all(|word| text.contains(word)) {
                return true;
            }
            let left = self.deadline.saturating_sub(self.started.elapsed());
            match self.console.recv_timeout(left) {
                Ok(chunk) => self.output.extend_from_slice(&chunk),
                Err(_) => return false,
            }
        }
    }

    /// The console so far, as lines without colour sequences.
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.output)
            .lines()
            .map(plain)
            .collect()
    }

    /// Presses the power button (ACPI), or with `cloud` logs in over SSH, checks the node there
    /// and runs `poweroff`, and waits for the system to shut down and QEMU to end (else QEMU is
    /// killed); why not, when it did not.
    fn power_off(mut self, cloud: Option<&HetznerCloudGuest>) -> (Result<(), String>, Vec<String>) {
        use std::io::Write as _;
        let pressed = match cloud {
            Some(guest) => self.check_and_power_off_over_ssh(guest),
            None => self
                .monitor
                .as_ref()
                .and_then(|socket| std::os::unix::net::UnixStream::connect(socket).ok())
                .is_some_and(|mut monitor| monitor.write_all(b"system_powerdown\n").is_ok())
                .then_some(())
                .ok_or_else(|| "the QEMU monitor took no system_powerdown".to_string()),
        };
        let deadline = Instant::now() + POWER_OFF_DEADLINE;
        let mut ended = false;
        while pressed.is_ok() && Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                ended = true;
                break;
            }
            while let Ok(chunk) = self.console.try_recv() {
                self.output.extend_from_slice(&chunk);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        while let Ok(chunk) = self.console.try_recv() {
            self.output.extend_from_slice(&chunk);
        }
        let outcome = pressed.and_then(|()| {
            ended
                .then_some(())
                .ok_or_else(|| format!("not off {POWER_OFF_DEADLINE:?} after the request"))
        });
        (outcome, self.lines())
    }

    /// Logs in as root with OpenSSH's client, the host key pinned to the one cloud-init printed
    /// on the console, checks what a booted node must be (cloud-init done; multi-user, sshd and
    /// time sync active; `/boot` mounted; no unit failed but the [`EXPECTED_FAILED_UNITS`]),
    /// and runs `poweroff`.
    fn check_and_power_off_over_ssh(&mut self, guest: &HetznerCloudGuest) -> Result<(), String> {
        let console = String::from_utf8_lossy(&self.output).into_owned();
        let host_key = console
            .split("-----BEGIN SSH HOST KEY KEYS-----")
            .nth(1)
            .and_then(|keys| keys.lines().find(|line| line.starts_with("ssh-ed25519 ")))
            .ok_or("cloud-init printed no ed25519 host key on the console")?;
        let known_hosts = guest.ssh_key.with_extension("known_hosts");
        let line = format!("[127.0.0.1]:{} {}\n", guest.ssh_port, host_key.trim());
        std::fs::write(&known_hosts, line).map_err(|error| error.to_string())?;
        let ssh = |command: &str| -> Result<(i32, String), String> {
            let output = Command::new("ssh")
                .arg("-i")
                .arg(&guest.ssh_key)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
                .args(["-o", "ConnectTimeout=30", "-p", &guest.ssh_port.to_string()])
                .args(["root@127.0.0.1", command])
                .stdin(Stdio::null())
                .output()
                .map_err(|error| format!("ssh: {error}"))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Ok((output.status.code().unwrap_or(-1), text))
        };
        let (_, status) = ssh("cloud-init status --wait")?;
        if !status.contains("status: done") {
            return Err(format!("cloud-init status over SSH: {status}"));
        }
        let (code, active) =
            ssh("systemctl is-active multi-user.target ssh.service systemd-timesyncd.service")?;
        if code != 0 {
            return Err(format!("not every unit is active: {active}"));
        }
        let (_, boot) = ssh("findmnt --noheadings --output SOURCE,TARGET /boot")?;
        if !boot.trim().ends_with("/boot") {
            return Err(format!("/boot is not mounted: {boot}"));
        }
        let (_, failed) = ssh("systemctl list-units --state=failed --plain --no-legend")?;
        let unexpected: Vec<&str> = failed
            .lines()
            .filter(|line| {
                !EXPECTED_FAILED_UNITS
                    .iter()
                    .any(|(description, _)| line.contains(description))
            })
            .collect();
        if !unexpected.is_empty() {
            return Err(format!("units failed: {unexpected:?}"));
        }
        // The connection ends with the system; its exit status says nothing.
        let _ = ssh("systemctl poweroff");
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// How long a clean shutdown may take under emulation.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(120);

/// Boots `disk` (a whole raw disk image with its partition table and boot loader) and checks
/// that it reaches `hostname`'s login prompt through GRUB, with `/boot` mounted, sshd started,
/// multi-user reached and no unit failed but the [`EXPECTED_FAILED_UNITS`].
pub fn disk_boots_through_its_boot_loader(disk: &Path, hostname: &str) {
    let test = "the installed disk boots through GRUB under QEMU";
    if let Some(reason) = qemu_missing() {
        eprintln!("SKIPPED {test}: {reason}");
        return;
    }
    let mut vm = Vm::start(disk, None, None);
    let prompt = format!("{hostname} login:");
    // The login prompt may come before multi-user is reached (cloud-init's stages still run,
    // slowly under emulation): wait for both.
    let booted = vm.wait_for(&[&prompt, "Multi-User System"]);
    let elapsed = vm.started.elapsed();
    let seen = vm.lines();
    drop(vm);
    let tail = seen[seen.len().saturating_sub(80)..].join("\n");
    assert!(
        booted,
        "{test}: no `{prompt}` and multi-user within {BOOT_DEADLINE:?}; the console ended with:\n{tail}"
    );
    eprintln!("{test}: `{prompt}` after {:.1}s", elapsed.as_secs_f64());
    check_console_health(test, &seen);
    check_console_units(test, &seen);
}

/// First boot of a node with cloud-init: boots the disk writably (on a Hetzner Cloud server's
/// hardware with `cloud`, else without a network card), waits for the login prompt and for
/// cloud-init to say it finished, then powers off through ACPI so that everything first boot
/// wrote is on the disk for the caller to read. Returns the console's lines.
pub fn first_boot_until_cloud_init_finished(
    disk: &Path,
    hostname: &str,
    cloud: Option<&HetznerCloudGuest>,
) -> Vec<String> {
    let test = "first boot under QEMU, with cloud-init";
    let monitor_dir = tempfile::tempdir().expect("monitor dir");
    let mut vm = Vm::start(disk, Some(monitor_dir.path()), cloud);
    let prompt = format!("{hostname} login:");
    // cloud-init's final stage says "Cloud-init v. N finished at ..." on the console.
    let finished = vm.wait_for(&[
        &prompt,
        "Multi-User System",
        "Cloud-init v.",
        " finished at ",
    ]);
    let elapsed = vm.started.elapsed();
    let deadline = vm.deadline;
    let (powered_off, seen) = vm.power_off(cloud);
    let tail = seen[seen.len().saturating_sub(80)..].join("\n");
    assert!(
        finished,
        "{test}: no login prompt and cloud-init end within {deadline:?}; the console ended with:\n{tail}"
    );
    if let Err(why) = powered_off {
        panic!("{test}: no clean power off: {why}\n{tail}");
    }
    eprintln!(
        "{test}: `{prompt}` and cloud-init finished after {:.1}s",
        elapsed.as_secs_f64()
    );
    check_console_health(test, &seen);
    // On a cloud node the checks ran over SSH: its serial getty starts early, and systemd stops
    // writing status lines to the console once a getty holds it.
    if cloud.is_none() {
        check_console_units(test, &seen);
    }
    seen
}

/// What every boot's console must show: GRUB, no unit failed but the expected ones, no panic or
/// emergency mode.
fn check_console_health(test: &str, seen: &[String]) {
    let console = seen.join("\n");
    assert!(
        console.contains("GRUB"),
        "{test}: GRUB never spoke; was the kernel loaded by something else?\n{console}"
    );
    let failed: Vec<&String> = seen
        .iter()
        .filter(|line| line.contains("FAILED") && line.contains("Failed to start"))
        .filter(|line| {
            !EXPECTED_FAILED_UNITS
                .iter()
                .any(|(description, _)| line.contains(description))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{test}: units failed: {failed:?}\n{console}"
    );
    for unwanted in ["Kernel panic", "emergency mode", "Failed to mount"] {
        assert!(
            !console.contains(unwanted),
            "{test}: the console says {unwanted:?}:\n{console}"
        );
    }
}

/// What systemd's status lines on the console must show: multi-user with sshd and time sync
/// started, /boot mounted.
fn check_console_units(test: &str, seen: &[String]) {
    let console = seen.join("\n");
    // systemd's status lines are cut to the console width, so they are matched by their parts:
    // `[  OK  ] Started ssh.service - OpenBSD Secure Shell server.`
    let said = |words: &[&str]| {
        seen.iter()
            .any(|line| words.iter().all(|word| line.contains(word)))
    };
    for wanted in [
        &["OK", "Reached target", "Multi-User System"][..],
        &["OK", "Started", "OpenBSD Secure Shell server"],
        &["OK", "Mounted", "/boot"],
        &["OK", "Started", "Network Time Synchronization"],
    ] {
        assert!(
            said(wanted),
            "{test}: the console never says {wanted:?}:\n{console}"
        );
    }
}

#[test]
fn colour_sequences_are_dropped() {
    assert_eq!(
        plain(
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mmulti-user.target\u{1b}[0m"
        ),
        "[  OK  ] Reached target multi-user.target"
    );
}
