//! A VM booting one raw disk under QEMU (x86, BIOS), its first serial port written to a file,
//! and a monitor socket to end it cleanly.
//!
//! QEMU gets the whole disk and nothing else: no `-kernel`, so the boot loader installed on the
//! disk is what boots. The console is the first serial port, where a tarball's kernel command
//! line (`console=ttyS0` last, see `caph_core::plan::GRUB_SERIAL_CONSOLE`) sends systemd's status
//! lines, cloud-init's output and a login prompt. Emulation (TCG), not KVM: nested KVM on CI
//! machines is missing or refuses host CPU models. The network, when asked for, is QEMU's user
//! network with `restrict=on`: the guest reaches nothing outside the VM, and nothing reaches it,
//! but for the forwards a Hetzner Cloud guest is given ([`HetznerCloudGuest`]).
//!
//! A clean power off is Ctrl-Alt-Del from the monitor: systemd (PID 1) turns it into a reboot
//! without needing logind or D-Bus (which a minimal image may lack, so the ACPI power button does
//! nothing there), and `-no-reboot` turns the reboot into QEMU's exit. The process is killed
//! and reaped when the [`Vm`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use crate::BootError;

/// The QEMU that boots x86 disks.
pub const QEMU: &str = "qemu-system-x86_64";

/// The interface name an x86 Debian or Ubuntu system gives the VM's network card: a virtio NIC
/// in PCI slot 3 of QEMU's i440fx machine, named by systemd's predictable scheme from the slot.
pub const GUEST_INTERFACE: &str = "ens3";
/// The guest's address on QEMU's user network, the one its DHCP would give.
pub const GUEST_IPV4: &str = "10.0.2.15";
/// The user network's prefix length.
pub const GUEST_IPV4_PREFIX: u8 = 24;
/// The user network's gateway.
pub const GUEST_GATEWAY: &str = "10.0.2.2";

/// The program that leads a Hetzner Cloud guest's metadata requests to a server on loopback.
pub const SOCAT: &str = "socat";

/// The address of Hetzner Cloud's metadata service, as a server sees it.
pub const METADATA_ADDRESS: &str = "169.254.169.254";

/// The VM's network card, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmNetwork {
    /// No network card.
    None,
    /// A card on QEMU's restricted user network ([`GUEST_INTERFACE`], [`GUEST_IPV4`]).
    Restricted,
    /// What a Hetzner Cloud server shows its system (see [`HetznerCloudGuest`]).
    HetznerCloud(HetznerCloudGuest),
}

/// What a Hetzner Cloud server shows its system, for a disk that reads its data from Hetzner's
/// metadata service (cloud-init's Hetzner data source): the SMBIOS system manufacturer `Hetzner`
/// (how the data source knows where it runs) with the server id as serial number, a network card
/// with the server's MAC address whose DHCP answers on the link-local network, and
/// `169.254.169.254:80` led by `socat` to `metadata` (QEMU's user network lets a guest reach a
/// host address only through such a forward; `restrict=on` keeps everything else out of reach).
/// `ssh`, when given, is a loopback address whose connections QEMU forwards to the guest's port
/// 22, so that a test can log in as a user of the server would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HetznerCloudGuest {
    /// The server id: the SMBIOS serial number (the metadata's `instance-id` should match).
    pub server_id: u64,
    /// The network card's MAC address (the metadata's network configuration names it).
    pub mac: String,
    /// The metadata server on loopback.
    pub metadata: std::net::SocketAddr,
    /// Where on loopback the guest's SSH port is reached, if anywhere.
    pub ssh: Option<std::net::SocketAddr>,
}

/// How the VM is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The raw disk image.
    pub disk: PathBuf,
    /// Where the serial console goes.
    pub console_log: PathBuf,
    /// The monitor's socket.
    pub monitor: PathBuf,
    /// Where QEMU's own messages go.
    pub qemu_log: PathBuf,
    /// Whether the boot writes to the disk; otherwise its writes go to a throwaway overlay
    /// (`-snapshot`) and the disk stays as it was.
    pub writable: bool,
    /// The network card, if any.
    pub network: VmNetwork,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
}

impl VmConfig {
    /// A VM of 1 GiB and two CPUs booting `disk`, its console and monitor in `dir`.
    pub fn new(disk: &Path, dir: &Path) -> VmConfig {
        VmConfig {
            disk: disk.to_path_buf(),
            console_log: dir.join("console.log"),
            monitor: dir.join("qemu-monitor.sock"),
            qemu_log: dir.join("qemu.log"),
            writable: true,
            network: VmNetwork::Restricted,
            memory_mib: 1024,
            cpus: 2,
        }
    }
}

/// Why this machine cannot run the VM, if it cannot.
pub fn qemu_missing() -> Option<String> {
    program_missing(QEMU, "qemu-system-x86")
}

/// Why this machine cannot lead a Hetzner Cloud guest to its metadata server, if it cannot.
pub fn socat_missing() -> Option<String> {
    program_missing(SOCAT, "socat")
}

fn program_missing(program: &str, package: &str) -> Option<String> {
    let found = ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).is_file());
    (!found).then(|| format!("{program} is missing (Debian package {package})"))
}

/// QEMU's arguments for `config`.
fn qemu_args(config: &VmConfig) -> Vec<String> {
    let mut args: Vec<String> = ["-accel", "tcg", "-machine", "pc"]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    args.extend([
        "-m".to_string(),
        config.memory_mib.to_string(),
        "-smp".to_string(),
        config.cpus.to_string(),
        "-nographic".to_string(),
        "-no-reboot".to_string(),
        "-serial".to_string(),
        format!("file:{}", config.console_log.display()),
        "-monitor".to_string(),
        format!("unix:{},server,nowait", config.monitor.display()),
        "-drive".to_string(),
        format!(
            "file={},format=raw,if=virtio{}",
            config.disk.display(),
            if config.writable { "" } else { ",snapshot=on" }
        ),
    ]);
    match &config.network {
        VmNetwork::None => args.extend(["-nic".to_string(), "none".to_string()]),
        VmNetwork::Restricted => args.extend([
            "-netdev".to_string(),
            "user,id=net0,restrict=on".to_string(),
            // Slot 3 fixes the name the guest gives it (GUEST_INTERFACE).
            "-device".to_string(),
            "virtio-net-pci,netdev=net0,addr=0x3".to_string(),
        ]),
        VmNetwork::HetznerCloud(guest) => {
            // The metadata address must lie in the guest's network for QEMU to forward it, so
            // the network is the link-local one, as the metadata service's is on Hetzner Cloud.
            let mut netdev = format!(
                "user,id=net0,net=169.254.0.0/16,host=169.254.0.1,dhcpstart=169.254.0.100,restrict=on,guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:{SOCAT} - TCP:{}",
                guest.metadata
            );
            if let Some(ssh) = guest.ssh {
                netdev.push_str(&format!(",hostfwd=tcp:{}:{}-:22", ssh.ip(), ssh.port()));
            }
            args.extend([
                "-smbios".to_string(),
                format!(
                    "type=1,manufacturer=Hetzner,product=vServer,serial={}",
                    guest.server_id
                ),
                "-netdev".to_string(),
                netdev,
                "-device".to_string(),
                format!("virtio-net-pci,netdev=net0,addr=0x3,mac={}", guest.mac),
            ]);
        }
    }
    args
}

/// How long a Ctrl-Alt-Del may go unanswered before it is pressed again.
const REPRESS_AFTER: Duration = Duration::from_secs(30);

/// How long the monitor may take to greet and to answer a command.
const MONITOR_PATIENCE: Duration = Duration::from_secs(10);

/// Sends one command to QEMU's human monitor and waits for its next prompt, so the command was
/// taken before the connection closes.
async fn monitor_command(socket: &Path, command: &str) -> std::io::Result<()> {
    let mut monitor = tokio::net::UnixStream::connect(socket).await?;
    let mut seen = Vec::new();
    // The greeting ends with the first prompt; the command's answer with the second.
    read_until_prompts(&mut monitor, &mut seen, 1).await?;
    monitor.write_all(format!("{command}\n").as_bytes()).await?;
    monitor.flush().await?;
    read_until_prompts(&mut monitor, &mut seen, 2).await
}

/// Reads the monitor until `wanted` prompts were seen in all, within [`MONITOR_PATIENCE`].
async fn read_until_prompts(
    monitor: &mut tokio::net::UnixStream,
    seen: &mut Vec<u8>,
    wanted: usize,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    const PROMPT: &[u8] = b"(qemu) ";
    let reading = async {
        let mut buffer = [0u8; 1024];
        while seen
            .windows(PROMPT.len())
            .filter(|window| *window == PROMPT)
            .count()
            < wanted
        {
            let count = monitor.read(&mut buffer).await?;
            if count == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the QEMU monitor closed",
                ));
            }
            seen.extend_from_slice(&buffer[..count]);
        }
        Ok(())
    };
    tokio::time::timeout(MONITOR_PATIENCE, reading)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the QEMU monitor did not answer",
            )
        })?
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// Every wanted text appeared.
    Found,
    /// The deadline passed first.
    Deadline,
    /// QEMU ended first (a panic with `-no-reboot`, a power off from inside).
    Ended,
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    qemu: crate::child::Reaped,
    config: VmConfig,
    started: Instant,
    console: Vec<u8>,
    read_from: u64,
}

impl Vm {
    /// Starts QEMU.
    pub async fn start(config: VmConfig) -> Result<Vm, BootError> {
        if let Some(missing) = qemu_missing() {
            return Err(BootError::Machine(missing));
        }
        if let VmNetwork::HetznerCloud(_) = &config.network
            && let Some(missing) = socat_missing()
        {
            return Err(BootError::Machine(missing));
        }
        let mut command = tokio::process::Command::new(QEMU);
        command.args(qemu_args(&config));
        let qemu_log =
            std::fs::File::create(&config.qemu_log).map_err(|error| BootError::Failed {
                what: format!("creating {}", config.qemu_log.display()),
                detail: error.to_string(),
            })?;
        let qemu = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qemu_log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| BootError::Failed {
                what: format!("starting {QEMU}"),
                detail: error.to_string(),
            })?;
        Ok(Vm {
            qemu: crate::child::Reaped(qemu),
            config,
            started: Instant::now(),
            console: Vec::new(),
            read_from: 0,
        })
    }

    /// How long it has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads what the console wrote since the last read.
    fn read_console(&mut self) {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.config.console_log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read_from)).is_ok() {
            let mut more = Vec::new();
            if file.read_to_end(&mut more).is_ok() {
                self.read_from += more.len() as u64;
                self.console.extend_from_slice(&more);
            }
        }
    }

    /// The console so far, as lines without colour sequences.
    pub fn lines(&mut self) -> Vec<String> {
        self.read_console();
        crate::console::lines(&self.console)
    }

    /// Reads the console until every one of `wanted` appeared (each anywhere), `deadline` passed
    /// (counted from the start), QEMU ended or `cancel` fired (an error). `watch` sees the
    /// console's lines after every read, for progress.
    pub async fn wait_for(
        &mut self,
        wanted: &[&str],
        deadline: Duration,
        cancel: &CancellationToken,
        watch: &mut (dyn FnMut(&[String], Duration) + Send),
    ) -> Result<Waited, BootError> {
        loop {
            let lines = self.lines();
            watch(&lines, self.uptime());
            let text = lines.join("\n");
            if wanted.iter().all(|word| text.contains(word)) {
                return Ok(Waited::Found);
            }
            if let Ok(Some(_)) = self.qemu.0.try_wait() {
                self.read_console();
                return Ok(Waited::Ended);
            }
            if self.uptime() >= deadline {
                return Ok(Waited::Deadline);
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = cancel.cancelled() => {
                    return Err(BootError::Cancelled {
                        phase: "boot",
                        cleanup: "the VM is stopped".to_string(),
                    });
                }
            }
        }
    }

    /// Presses Ctrl-Alt-Del and waits up to `deadline` for the system to shut down and QEMU to
    /// end; whether it did (else QEMU is killed, as if the power was cut). A press the guest
    /// missed (its keyboard not yet listening) is repeated now and then, never so often that
    /// systemd would take it for the seven presses that force an immediate reboot.
    pub async fn power_off(&mut self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let mut ended = false;
        let mut pressed_at: Option<Instant> = None;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.qemu.0.try_wait() {
                ended = true;
                break;
            }
            if pressed_at.is_none_or(|at| at.elapsed() >= REPRESS_AFTER) {
                if monitor_command(&self.config.monitor, "sendkey ctrl-alt-delete")
                    .await
                    .is_err()
                {
                    // No monitor, no clean power off: cut the power.
                    break;
                }
                pressed_at = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.qemu.0.start_kill();
        let _ = self.qemu.0.wait().await;
        self.read_console();
        ended
    }

    /// QEMU's own messages (a disk it cannot open, a missing firmware).
    pub fn qemu_messages(&self) -> String {
        std::fs::read_to_string(&self.config.qemu_log).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(network: VmNetwork) -> VmConfig {
        let mut config = VmConfig::new(Path::new("/work/disk.img"), Path::new("/work"));
        config.writable = false;
        config.network = network;
        config
    }

    /// The arguments after `flag`, each time it appears.
    fn values(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].clone())
            .collect()
    }

    #[test]
    fn the_disk_is_the_only_drive_and_boots_through_its_own_loader() {
        let args = qemu_args(&config(VmNetwork::None));
        assert_eq!(
            values(&args, "-drive"),
            ["file=/work/disk.img,format=raw,if=virtio,snapshot=on"]
        );
        assert!(!args.iter().any(|arg| arg == "-kernel"), "{args:?}");
        assert_eq!(values(&args, "-nic"), ["none"]);
        assert_eq!(values(&args, "-serial"), ["file:/work/console.log"]);
        assert!(values(&args, "-smbios").is_empty());
    }

    #[test]
    fn a_restricted_network_reaches_nothing() {
        let args = qemu_args(&config(VmNetwork::Restricted));
        assert_eq!(values(&args, "-netdev"), ["user,id=net0,restrict=on"]);
        assert_eq!(
            values(&args, "-device"),
            ["virtio-net-pci,netdev=net0,addr=0x3"]
        );
    }

    #[test]
    fn a_hetzner_cloud_guest_shows_hetzner_and_reaches_only_its_metadata_and_ssh() {
        let guest = HetznerCloudGuest {
            server_id: 4242,
            mac: "96:00:00:00:42:42".to_string(),
            metadata: "127.0.0.1:8080".parse().unwrap(),
            ssh: Some("127.0.0.1:2222".parse().unwrap()),
        };
        let args = qemu_args(&config(VmNetwork::HetznerCloud(guest.clone())));
        assert_eq!(
            values(&args, "-smbios"),
            ["type=1,manufacturer=Hetzner,product=vServer,serial=4242"]
        );
        assert_eq!(
            values(&args, "-netdev"),
            [
                "user,id=net0,net=169.254.0.0/16,host=169.254.0.1,dhcpstart=169.254.0.100,restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080,hostfwd=tcp:127.0.0.1:2222-:22"
            ]
        );
        assert_eq!(
            values(&args, "-device"),
            ["virtio-net-pci,netdev=net0,addr=0x3,mac=96:00:00:00:42:42"]
        );
        let without_ssh = HetznerCloudGuest { ssh: None, ..guest };
        let args = qemu_args(&config(VmNetwork::HetznerCloud(without_ssh)));
        assert!(!values(&args, "-netdev")[0].contains("hostfwd"), "{args:?}");
    }
}
