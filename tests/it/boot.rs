//! The booted check: a disk the real installimage wrote starts under QEMU through its own boot
//! loader (BIOS, GRUB from the MBR, the tarball's kernel and initramfs, root by UUID) and comes
//! up to a login prompt with its hostname and sshd running.
//!
//! The VM is `caph_boot::qemu::Vm`, the one `caph-image verify tarball` boots; what the console
//! must show is `caph_boot::console::findings`, with the units this VM cannot start allowed (see
//! [`EXPECTED_FAILED_UNITS`]). QEMU gets the whole disk and nothing else: no `-kernel`, so GRUB as
//! installimage installed it is what boots, and no network card, as the installed network
//! configuration names the rescue system's interface.

use std::path::Path;
use std::time::Duration;

use caph_boot::console;
use caph_boot::qemu::{Vm, VmConfig, VmNetwork, Waited};
use caph_core::checks::FindingStatus;
use tokio_util::sync::CancellationToken;

/// A boot under emulation takes 30-130 s on two loaded cores; five minutes means it hangs.
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

/// Starts QEMU on `disk` without a network card (the installed configuration names the rescue
/// system's interface), its console and monitor in `dir`; `writable`: whether the boot writes to
/// the disk, else to a throwaway overlay.
async fn start(disk: &Path, dir: &Path, writable: bool) -> Vm {
    let mut config = VmConfig::new(disk, dir);
    config.writable = writable;
    config.network = VmNetwork::None;
    Vm::start(config).await.expect("QEMU starts")
}

/// Whether this machine can run the booted check; the reason when it cannot.
pub fn qemu_missing() -> Option<String> {
    caph_boot::qemu::qemu_missing()
}

/// Boots `disk` (a whole raw disk image with its partition table and boot loader) and checks
/// that it reaches `hostname`'s login prompt through GRUB, with `/boot` mounted, sshd started,
/// multi-user reached and no unit failed but the [`EXPECTED_FAILED_UNITS`]. The disk stays as it
/// was (writes go to a throwaway overlay).
pub async fn disk_boots_through_its_boot_loader(disk: &Path, hostname: &str) {
    let test = "the installed disk boots through GRUB under QEMU";
    if let Some(reason) = qemu_missing() {
        eprintln!("SKIPPED {test}: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("a directory for the console");
    let mut vm = start(disk, dir.path(), false).await;
    let prompt = format!("{hostname} login:");
    // The login prompt may come before multi-user is reached (cloud-init's stages still run,
    // slowly under emulation): wait for both.
    let waited = vm
        .wait_for(
            &[&prompt, "Multi-User System"],
            BOOT_DEADLINE,
            &CancellationToken::new(),
            &mut |_, _| {},
        )
        .await
        .expect("not cancelled");
    let elapsed = vm.uptime();
    let seen = vm.lines();
    drop(vm);
    let tail = seen[seen.len().saturating_sub(80)..].join("\n");
    assert_eq!(
        waited,
        Waited::Found,
        "{test}: no `{prompt}` and multi-user within {BOOT_DEADLINE:?}; the console ended with:\n{tail}"
    );
    eprintln!("{test}: `{prompt}` after {:.1}s", elapsed.as_secs_f64());
    check_console(test, &seen, hostname);
}

/// What every boot's console must show (`caph_boot::console::findings`: GRUB, multi-user, sshd,
/// the login prompt, no panic or emergency mode, no failed unit but the expected ones), and
/// what these installs add: /boot mounted, time sync started.
fn check_console(test: &str, seen: &[String], hostname: &str) {
    let console_text = seen.join("\n");
    for finding in console::findings(seen, hostname) {
        if finding.name == "failed-units" {
            continue;
        }
        assert_eq!(
            finding.status,
            FindingStatus::Ok,
            "{test}: {}: {}\n{console_text}",
            finding.name,
            finding.detail
        );
    }
    let failed: Vec<String> = console::failed_units(seen)
        .into_iter()
        .filter(|unit| {
            !EXPECTED_FAILED_UNITS
                .iter()
                .any(|(description, _)| unit.contains(description))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{test}: units failed: {failed:?}\n{console_text}"
    );
    for wanted in [
        &["OK", "Mounted", "/boot"][..],
        &["OK", "Started", "Network Time Synchronization"],
    ] {
        assert!(
            console::said(seen, wanted),
            "{test}: the console never says {wanted:?}:\n{console_text}"
        );
    }
}
