//! The booted check: the disk the simulated installimage wrote starts under QEMU, with the
//! tarball's own kernel and initramfs, and comes up to a login prompt with its hostname and
//! sshd running. The simulation does not run grub-install (no firmware boots there), so QEMU
//! loads the kernel directly; everything after the kernel (initramfs, root by UUID, fstab,
//! systemd, the host keys installimage made) is the installed system's own.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use caph_sim::installimage::{InstalledDisk, MANIFEST_NAME, Manifest};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A boot under emulation takes 20-60 s on two loaded cores; five minutes means it hangs.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// The one file in `dir` whose name starts with `prefix` (`vmlinuz-`, `initrd.img-`).
fn boot_file(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    found.into_iter().next().unwrap()
}

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

/// Boots the installed disk of a server (its `disk_dir` on the host, with installimage's
/// manifest) with the kernel and initramfs in `boot_dir`, and checks that it reaches a login
/// prompt as `hostname` with sshd started.
pub fn installed_disk_boots(disk_dir: &Path, boot_dir: &Path, hostname: &str) {
    let test = "the installed disk boots under QEMU";
    if !Path::new(QEMU).exists() {
        eprintln!("SKIPPED {test}: {QEMU} is missing (Debian package qemu-system-x86)");
        return;
    }
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(disk_dir.join(MANIFEST_NAME)).expect("installimage's manifest"),
    )
    .unwrap();
    let InstalledDisk::Images { partitions } = &manifest.disk else {
        panic!("{test}: installed into a directory, not onto disk images: {manifest:?}");
    };
    let root = partitions
        .iter()
        .find(|partition| partition.mount == "/")
        .expect("a / partition");
    let image = disk_dir.join(root.image.file_name().expect("an image file"));
    let kernel = boot_file(boot_dir, "vmlinuz-");
    let initrd = boot_file(boot_dir, "initrd.img-");

    let started = Instant::now();
    let mut qemu = Command::new(QEMU)
        // Emulation, not KVM: nested KVM on CI machines is missing or refuses host CPU models,
        // and emulation boots this system in well under a minute.
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        // Writes go to a throwaway overlay: the disk stays as installimage left it.
        .arg("-snapshot")
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("root=UUID={} ro console=ttyS0 panic=-1", root.uuid))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", image.display()))
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
    let prompt = format!("{hostname} login:");
    let mut output: Vec<u8> = Vec::new();
    let booted = loop {
        let left = BOOT_DEADLINE.saturating_sub(started.elapsed());
        match console.recv_timeout(left) {
            Ok(chunk) => {
                output.extend_from_slice(&chunk);
                // The prompt is short: looking at the recent end is enough.
                let recent = &output[output.len().saturating_sub(chunk.len() + prompt.len())..];
                if String::from_utf8_lossy(recent).contains(&prompt) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let seen: Vec<String> = String::from_utf8_lossy(&output)
        .lines()
        .map(plain)
        .collect();
    let tail = seen[seen.len().saturating_sub(80)..].join("\n");
    assert!(
        booted,
        "{test}: no `{prompt}` within {BOOT_DEADLINE:?}; the console ended with:\n{tail}"
    );
    eprintln!(
        "{test}: `{prompt}` after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let console = seen.join("\n");
    // systemd's status lines are cut to the console width, so they are matched by their ends:
    // `[  OK  ] Started ssh.servic… - OpenBSD Secure Shell server.`
    let said = |words: &[&str]| {
        seen.iter()
            .any(|line| words.iter().all(|word| line.contains(word)))
    };
    for wanted in [
        &["OK", "Reached target", "Multi-User System"][..],
        &["OK", "Started", "OpenBSD Secure Shell server"],
        &["OK", "Mounted", "/boot"],
    ] {
        assert!(
            said(wanted),
            "{test}: the console never says {wanted:?}:\n{console}"
        );
    }
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
