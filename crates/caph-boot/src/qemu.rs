//! A VM booting one raw disk under QEMU (x86, BIOS), its first serial port written to a file,
//! and a monitor socket to end it cleanly.
//!
//! QEMU gets the whole disk and nothing else: no `-kernel`, so the boot loader installed on the
//! disk is what boots. The console is the first serial port, where a tarball's kernel command
//! line (`console=ttyS0` last, see `caph_core::plan::GRUB_SERIAL_CONSOLE`) sends systemd's status
//! lines, cloud-init's output and a login prompt. Emulation (TCG), not KVM: nested KVM on CI
//! machines is missing or refuses host CPU models. The network, when asked for, is QEMU's user
//! network with `restrict=on`: the guest reaches nothing outside the VM, and nothing reaches it.
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
    /// A network card on QEMU's restricted user network ([`GUEST_INTERFACE`]), or none.
    pub network: bool,
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
            network: true,
            memory_mib: 1024,
            cpus: 2,
        }
    }
}

/// Why this machine cannot run the VM, if it cannot.
pub fn qemu_missing() -> Option<String> {
    let found = ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(QEMU).is_file());
    (!found).then(|| format!("{QEMU} is missing (Debian package qemu-system-x86)"))
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
        let mut command = tokio::process::Command::new(QEMU);
        command
            .args(["-accel", "tcg", "-machine", "pc"])
            .arg("-m")
            .arg(config.memory_mib.to_string())
            .arg("-smp")
            .arg(config.cpus.to_string())
            .args(["-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", config.console_log.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", config.monitor.display()))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio{}",
                config.disk.display(),
                if config.writable { "" } else { ",snapshot=on" }
            ));
        if config.network {
            command
                .args(["-netdev", "user,id=net0,restrict=on"])
                // Slot 3 fixes the name the guest gives it (GUEST_INTERFACE).
                .args(["-device", "virtio-net-pci,netdev=net0,addr=0x3"]);
        } else {
            command.args(["-nic", "none"]);
        }
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
