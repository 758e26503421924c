//! The booted check: a disk the real installimage wrote starts under QEMU through its own boot
//! loader (BIOS, GRUB from the MBR, the tarball's kernel and initramfs, root by UUID) and comes
//! up to a login prompt with its hostname and sshd running.
//!
//! QEMU gets the whole disk and nothing else: no `-kernel`, so GRUB as installimage installed
//! it is what boots. `-snapshot` keeps the disk as installed. The console is the first serial
//! port, where the tarball's kernel command line (`console=ttyS0` last, see
//! `caph_core::plan::GRUB_SERIAL_CONSOLE`) sends systemd's status lines and a login prompt.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A boot under emulation takes 30-70 s on two loaded cores; five minutes means it hangs.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

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

/// A VM booting one raw disk, with its serial console read as it comes.
struct Vm {
    qemu: std::process::Child,
    console: mpsc::Receiver<Vec<u8>>,
    output: Vec<u8>,
    started: Instant,
}

impl Vm {
    /// Starts QEMU on `disk` through a throwaway overlay (`-snapshot`): the disk stays as it was.
    fn start(disk: &Path) -> Vm {
        let mut command = Command::new(QEMU);
        command
            // Emulation, not KVM: nested KVM on CI machines is missing or refuses host CPU models.
            .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
        command.arg("-snapshot");
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
            let left = BOOT_DEADLINE.saturating_sub(self.started.elapsed());
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
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Boots `disk` (a whole raw disk image with its partition table and boot loader) and checks
/// that it reaches `hostname`'s login prompt through GRUB, with `/boot` mounted, sshd started,
/// multi-user reached and no unit failed but the [`EXPECTED_FAILED_UNITS`].
pub fn disk_boots_through_its_boot_loader(disk: &Path, hostname: &str) {
    let test = "the installed disk boots through GRUB under QEMU";
    if let Some(reason) = qemu_missing() {
        eprintln!("SKIPPED {test}: {reason}");
        return;
    }
    let mut vm = Vm::start(disk);
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
    check_console(test, &seen);
}

/// What every boot's console must show: GRUB, multi-user with sshd and time sync started, /boot
/// mounted, no unit failed but the expected ones, no panic or emergency mode.
fn check_console(test: &str, seen: &[String]) {
    let console = seen.join("\n");
    assert!(
        console.contains("GRUB"),
        "{test}: GRUB never spoke; was the kernel loaded by something else?\n{console}"
    );
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

#[test]
fn colour_sequences_are_dropped() {
    assert_eq!(
        plain(
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mmulti-user.target\u{1b}[0m"
        ),
        "[  OK  ] Reached target multi-user.target"
    );
}
