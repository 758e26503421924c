//! What the `--sim` modes of `build hcloud` and `build robot` share: real sshd machines on this
//! machine, their root filesystems prepared with progress, and errors that name the fix.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use caph_core::Arch;
use caph_core::backend::{ProgressEvent, ProgressSink as _};
use caph_sim::machine::{MachineLog, SshMachines, SshMachinesConfig};

use crate::output;
use crate::progress::Progress;

/// The simulator's servers: [`SshMachines`] whose log lines print as notes while root
/// filesystems are prepared (mmdebstrap's output on a cold cache, before any progress block
/// exists) and become progress output, shown with --verbose, once the build runs.
pub struct Machines {
    pub machines: Arc<SshMachines>,
    log: MachineLog,
    preparing: Arc<AtomicBool>,
    cache: PathBuf,
}

impl Machines {
    /// Starts the machines, or says what this machine lacks for them and how to fix it;
    /// `command` is the command line to suggest running as root. `background_disks`: see
    /// [`SshMachinesConfig::background_disks`].
    pub fn start(
        progress: &Arc<Progress>,
        command: &str,
        background_disks: bool,
    ) -> anyhow::Result<Machines> {
        let preparing = Arc::new(AtomicBool::new(true));
        let log: MachineLog = {
            let preparing = preparing.clone();
            let progress = progress.clone();
            Arc::new(move |line: &str| {
                if preparing.load(Ordering::Relaxed) {
                    output::note(&format!("  simulator | {line}"));
                } else {
                    progress.event(ProgressEvent::Output {
                        scope: "simulator".to_string(),
                        line: line.to_string(),
                    });
                }
            })
        };
        let config = SshMachinesConfig {
            log: Some(log.clone()),
            background_disks,
            ..Default::default()
        };
        let cache = config.rootfs_cache.clone();
        let machines = SshMachines::new(config).map_err(|error| {
            let message = error.to_string();
            anyhow::anyhow!(
                "--sim cannot run the simulator's servers on this machine: {message}{}",
                fix_hint(&message, command)
            )
        })?;
        Ok(Machines {
            machines: Arc::new(machines),
            log,
            preparing,
            cache,
        })
    }

    /// Builds or finds the root filesystem `image` for `arch` now, with a note before and
    /// after: a cold cache is an mmdebstrap run of minutes, which must not look like a hang.
    pub async fn prepare(&self, image: &str, arch: Arch) -> anyhow::Result<()> {
        output::note(&format!(
            "simulator: preparing the {image} root filesystem for {arch} (built with mmdebstrap on first use, which takes minutes; cached in {})",
            self.cache.display()
        ));
        let started = Instant::now();
        self.machines
            .prepare_image(image, arch.hcloud_name())
            .await
            .map_err(anyhow::Error::new)?;
        output::note(&format!(
            "simulator: {image} for {arch} ready after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The machines' log, for simulators layered on them (the Robot's rescue systems).
    pub fn log(&self) -> MachineLog {
        self.log.clone()
    }

    /// From now on the machines' lines are progress output.
    pub fn prepared(&self) {
        self.preparing.store(false, Ordering::Relaxed);
    }
}

/// The commands that fix what [`SshMachines::new`] found missing: its message names each
/// missing binary with "(Debian package NAME)" and a missing root with "root (running as uid".
pub fn fix_hint(message: &str, command: &str) -> String {
    const PACKAGE: &str = "(Debian package ";
    let packages: Vec<&str> = message
        .match_indices(PACKAGE)
        .filter_map(|(at, _)| {
            let rest = &message[at + PACKAGE.len()..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect();
    let mut fixes = Vec::new();
    if !packages.is_empty() {
        fixes.push(format!("`sudo apt-get install {}`", packages.join(" ")));
    }
    if message.contains("root (running as uid") {
        fixes.push(format!(
            "run as root (`sudo {command}`; sudo -E keeps your environment)"
        ));
    }
    if fixes.is_empty() {
        String::new()
    } else {
        format!("; to fix: {}", fixes.join(", then "))
    }
}

#[cfg(test)]
mod tests {
    use super::fix_hint;

    #[test]
    fn the_fix_names_every_missing_package_and_root() {
        // The shape of `SshMachines::new`'s message (the end-to-end test checks the real one).
        let message = "simulated SSH machines need: root (running as uid 1000): sshd's ChrootDirectory needs it; /usr/sbin/sshd (Debian package openssh-server); /usr/bin/mmdebstrap (Debian package mmdebstrap)";
        assert_eq!(
            fix_hint(message, "caph-image build hcloud SPEC --sim"),
            "; to fix: `sudo apt-get install openssh-server mmdebstrap`, then run as root (`sudo caph-image build hcloud SPEC --sim`; sudo -E keeps your environment)"
        );
        assert_eq!(
            fix_hint(
                "creating /var/lib/caph-sim: read-only",
                "caph-image build hcloud SPEC --sim"
            ),
            ""
        );
    }
}
