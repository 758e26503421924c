//! The seam between the API simulators and the machines behind their servers.
//!
//! The API state machines decide *when* a server powers on, powers off, is snapshotted or deleted;
//! a [`MachineHost`] decides *what* that means on this computer: nothing but an address
//! ([`AddressOnly`]), or a real `sshd` on that address running in the server's own root filesystem
//! (`machine::SshMachines`).

use std::fmt::Debug;
use std::net::Ipv4Addr;

/// What a new server's disk starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A system image such as `debian-12`, for one architecture (`x86` or `arm`).
    System {
        /// Image name, e.g. `debian-12`.
        name: String,
        /// `x86` or `arm`.
        architecture: String,
    },
    /// A snapshot made earlier by [`MachineHost::snapshot`].
    Snapshot {
        /// The snapshot's image ID.
        image_id: u64,
    },
    /// A directory on this host that holds a root filesystem and stays unchanged while the
    /// machine exists (the Robot simulator's rescue template, or an installed system read off
    /// a disk). Hosts that keep no disks ignore it.
    Tree {
        /// The directory.
        path: std::path::PathBuf,
    },
}

/// What a machine's own cloud-init gets at boot, where its root filesystem has cloud-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudInit {
    /// cloud-init does not run (a rescue system, or a machine whose boot is not the point).
    Off,
    /// cloud-init runs with what the system itself carries (a dedicated server, whose NoCloud
    /// seed the installation wrote).
    LocalSeed,
    /// cloud-init runs with the server's `user_data` as its NoCloud seed, and the server id as
    /// its instance id (a Hetzner Cloud server, whose data source serves both).
    UserData,
}

/// Everything a host needs to bring up the machine behind a new server.
#[derive(Clone)]
pub struct MachineSpec {
    /// The server id; also the machine's key in every later call.
    pub server_id: u64,
    /// The server name, used as the machine's hostname.
    pub hostname: String,
    /// What the disk starts from.
    pub disk: DiskSource,
    /// OpenSSH public keys (one line each) to authorize for root.
    pub authorized_keys: Vec<String>,
    /// The raw `user_data` given at creation, if any (cloud-config is interpreted by the host).
    pub user_data: Option<String>,
    /// Whether and how the machine's own cloud-init runs at boot.
    pub cloud_init: CloudInit,
}

impl std::fmt::Debug for MachineSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `user_data` may carry a private host key (cloud-config `ssh_keys`): show its size only.
        formatter
            .debug_struct("MachineSpec")
            .field("server_id", &self.server_id)
            .field("hostname", &self.hostname)
            .field("disk", &self.disk)
            .field("cloud_init", &self.cloud_init)
            .field("authorized_keys", &self.authorized_keys)
            .field(
                "user_data",
                &self
                    .user_data
                    .as_ref()
                    .map(|data| format!("<{} bytes>", data.len())),
            )
            .finish()
    }
}

/// What the API reports about a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineInfo {
    /// The address reported as `public_net.ipv4.ip`; unique among live machines, in 127.0.0.0/8.
    pub ipv4: Ipv4Addr,
}

/// A boot into the rescue system: what `enable_rescue` followed by a power on or reset asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRescue {
    /// OpenSSH public keys the activation authorizes for root.
    pub authorized_keys: Vec<String>,
    /// `x86` or `arm`: the rescue system's architecture is the server's.
    pub architecture: String,
    /// The server's disk in bytes (its type's), which the rescue system shows as `/dev/sda`.
    pub disk_bytes: u64,
}

/// Why a host could not do what the API asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MachineError(pub String);

/// The machines behind simulated servers. Calls for one server never overlap.
#[async_trait::async_trait]
pub trait MachineHost: Debug + Send + Sync {
    /// Allocates an address and prepares the disk; the machine starts powered off.
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError>;
    /// Boots the machine: from now on its address answers SSH (where the host provides SSH).
    async fn power_on(&self, server_id: u64) -> Result<(), MachineError>;
    /// Boots the rescue system instead of the server's disk: from now on its address answers
    /// SSH with the rescue system, whose `/dev/sda` is the server's disk. Hosts without a rescue
    /// system refuse it.
    async fn power_on_rescue(
        &self,
        server_id: u64,
        rescue: &CloudRescue,
    ) -> Result<(), MachineError> {
        let _ = rescue;
        Err(MachineError(format!(
            "server {server_id}: this machine host has no rescue system"
        )))
    }
    /// Stops the machine: its address refuses connections.
    async fn power_off(&self, server_id: u64) -> Result<(), MachineError>;
    /// Copies the machine's disk into a new snapshot; returns the bytes used, for `image_size`.
    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError>;
    /// Removes the machine and everything it held.
    async fn delete(&self, server_id: u64) -> Result<(), MachineError>;
    /// Removes a snapshot's copy of a disk.
    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError>;
}

/// Bytes a snapshot of an [`AddressOnly`] machine reports by default: a small Debian after
/// provisioning, about 1.2 GB.
const ADDRESS_ONLY_SNAPSHOT_BYTES: u64 = 1_200_000_000;

/// Addresses handed out by every [`AddressOnly`] in this process, so that two simulators in one
/// test binary never report the same address. Starts at 127.1.0.1: 127.0.0.0/16 stays free for
/// services that bind loopback the usual way.
static NEXT_ADDRESS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A [`MachineHost`] that only allocates an address per server: nothing listens there. The
/// default for API-only tests.
#[derive(Debug)]
pub struct AddressOnly {
    snapshot_bytes: u64,
    machines: std::sync::Mutex<std::collections::HashMap<u64, Ipv4Addr>>,
}

impl Default for AddressOnly {
    fn default() -> Self {
        AddressOnly::with_snapshot_bytes(ADDRESS_ONLY_SNAPSHOT_BYTES)
    }
}

impl AddressOnly {
    /// Reports `bytes` as the used disk of every snapshot (it sets `image_size` and how long
    /// `create_image` takes).
    pub fn with_snapshot_bytes(bytes: u64) -> AddressOnly {
        AddressOnly {
            snapshot_bytes: bytes,
            machines: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn machines(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Ipv4Addr>> {
        self.machines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn known(&self, server_id: u64) -> Result<(), MachineError> {
        if self.machines().contains_key(&server_id) {
            Ok(())
        } else {
            Err(MachineError(format!("no machine for server {server_id}")))
        }
    }
}

/// The next free address in 127.1.0.1 ..= 127.255.255.254, skipping .0 and .255 host parts.
fn next_loopback_address() -> Result<Ipv4Addr, MachineError> {
    // Usable addresses per /24 once .0 and .255 are skipped.
    const PER_BLOCK: u32 = 254;
    // Blocks from 127.1.0.0/24 up to 127.255.255.0/24.
    const BLOCKS: u32 = 255 * 256 - 256;
    let index = NEXT_ADDRESS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if index >= PER_BLOCK * BLOCKS {
        return Err(MachineError("loopback addresses exhausted".into()));
    }
    let block = 256 + index / PER_BLOCK;
    let host = 1 + index % PER_BLOCK;
    Ok(Ipv4Addr::new(
        127,
        (block >> 8) as u8,
        (block & 0xff) as u8,
        host as u8,
    ))
}

#[async_trait::async_trait]
impl MachineHost for AddressOnly {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        let ipv4 = next_loopback_address()?;
        self.machines().insert(spec.server_id, ipv4);
        Ok(MachineInfo { ipv4 })
    }

    async fn power_on(&self, server_id: u64) -> Result<(), MachineError> {
        self.known(server_id)
    }

    async fn power_on_rescue(
        &self,
        server_id: u64,
        _rescue: &CloudRescue,
    ) -> Result<(), MachineError> {
        self.known(server_id)
    }

    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        self.known(server_id)
    }

    async fn snapshot(&self, server_id: u64, _image_id: u64) -> Result<u64, MachineError> {
        self.known(server_id)?;
        Ok(self.snapshot_bytes)
    }

    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.known(server_id)?;
        self.machines().remove(&server_id);
        Ok(())
    }

    async fn delete_image(&self, _image_id: u64) -> Result<(), MachineError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_are_unique_loopback_and_never_the_usual_one() {
        let host = AddressOnly::default();
        let mut seen = std::collections::HashSet::new();
        for server_id in 0..600 {
            let spec = MachineSpec {
                server_id,
                hostname: format!("s{server_id}"),
                disk: DiskSource::Snapshot { image_id: 1 },
                authorized_keys: Vec::new(),
                user_data: None,
                cloud_init: CloudInit::Off,
            };
            let info = host.create(spec).await.expect("address");
            let [a, b, _, d] = info.ipv4.octets();
            assert_eq!(a, 127);
            assert!(b >= 1, "{}", info.ipv4);
            assert!(d != 0 && d != 255, "{}", info.ipv4);
            assert!(seen.insert(info.ipv4));
        }
    }
}
