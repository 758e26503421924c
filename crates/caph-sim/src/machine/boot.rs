//! What a real server's boot does that this simulation needs of it, where no systemd runs: a machine id where the system has none, and cloud-init's boot stages with a NoCloud seed where the server's data source would serve its user data.
//!
//! A simulated machine's first process is sshd (see the module documentation of `machine`), so
//! nothing starts the units a booting system would. Two of them matter to the images this project
//! builds and to the programs that consume them:
//!
//! - `systemd-machine-id-setup`: an empty or missing `/etc/machine-id` gets a fresh id at boot,
//!   which is how clones of one image tell themselves apart;
//! - cloud-init's four stages (`init --local`, `init`, `modules --mode=config`,
//!   `modules --mode=final`), run by its systemd units at every boot, after sshd is up for the
//!   last ones. Cluster API Provider Hetzner polls `cloud-init status` until it says done, and a
//!   build's plan waits for it (`cloud-init status --wait`).
//!
//! For a Hetzner Cloud server the data source is Hetzner's metadata service; here its user data
//! and instance id (the server id) come as a NoCloud seed (`/var/lib/cloud/seed/nocloud`), which
//! cloud-init reads the same way. A dedicated server's seed is whatever its installation wrote
//! (`/var/lib/cloud/seed/nocloud-net`, by CAPH's post-install script).

use std::path::Path;

use crate::host::{CloudInit, MachineError};

/// Where the simulation writes a Hetzner Cloud server's NoCloud seed.
pub(crate) const NOCLOUD_SEED_DIR: &str = "var/lib/cloud/seed/nocloud";

/// Whether the root filesystem has cloud-init.
pub(crate) fn has_cloud_init(root: &Path) -> bool {
    root.join("usr/bin/cloud-init").exists()
}

/// Writes the NoCloud seed of a Hetzner Cloud server into `root`: its user data (empty without
/// any, as the metadata service then serves none) and meta data naming the server as the
/// instance, so that a server made from a snapshot is a new instance to cloud-init.
pub(crate) fn write_cloud_seed(
    root: &Path,
    server_id: u64,
    hostname: &str,
    user_data: Option<&str>,
) -> Result<(), MachineError> {
    let dir = root.join(NOCLOUD_SEED_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|error| MachineError(format!("creating {}: {error}", dir.display())))?;
    for (name, content) in [
        (
            "meta-data",
            format!("instance-id: {server_id}\nlocal-hostname: {hostname}\n"),
        ),
        ("user-data", user_data.unwrap_or_default().to_owned()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .map_err(|error| MachineError(format!("writing {}: {error}", path.display())))?;
    }
    Ok(())
}

/// Whether cloud-init is to run at this machine's boot.
pub(crate) fn runs_cloud_init(mode: CloudInit, root: &Path) -> bool {
    mode != CloudInit::Off && has_cloud_init(root)
}

/// The part of a machine's boot that does what systemd would, sourced by the boot script after
/// the machine's `/proc`, `/dev` and `/run` are mounted in `$root`. With `CAPH_SIM_CLOUD_INIT`
/// set, cloud-init's stages run chrooted in the background while sshd starts, as they do on a
/// real boot; their output goes where cloud-init's own logging sends it
/// (`/var/log/cloud-init-output.log`), and what the stages themselves print to
/// `$CAPH_SIM_BOOT_LOG`, outside the machine's disk.
pub(crate) const BOOT_FRAGMENT: &str = r#"
# systemd-machine-id-setup: a fresh id where the system has none.
if [ ! -s "$root/etc/machine-id" ] && [ ! -L "$root/etc/machine-id" ]; then
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$root/etc/machine-id"
  echo >> "$root/etc/machine-id"
fi
if [ -n "${CAPH_SIM_CLOUD_INIT:-}" ]; then
  ( set +e
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      /bin/sh -c 'cloud-init init --local && cloud-init init && cloud-init modules --mode=config && cloud-init modules --mode=final'
  ) </dev/null >>"$CAPH_SIM_BOOT_LOG" 2>&1 &
fi
"#;
