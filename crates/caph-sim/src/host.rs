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
    System { name: String, architecture: String },
    /// A snapshot made earlier by [`MachineHost::snapshot`].
    Snapshot { image_id: u64 },
}

/// Everything a host needs to bring up the machine behind a new server.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The server id; also the machine's key in every later call.
    pub server_id: u64,
    /// The server name, used as the machine's hostname.
    pub hostname: String,
    pub disk: DiskSource,
    /// OpenSSH public keys (one line each) to authorize for root.
    pub authorized_keys: Vec<String>,
    /// The raw `user_data` given at creation, if any (cloud-config is interpreted by the host).
    pub user_data: Option<String>,
}

/// What the API reports about a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineInfo {
    /// The address reported as `public_net.ipv4.ip`; unique among live machines, in 127.0.0.0/8.
    pub ipv4: Ipv4Addr,
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
    /// Stops the machine: its address refuses connections.
    async fn power_off(&self, server_id: u64) -> Result<(), MachineError>;
    /// Copies the machine's disk into a new snapshot; returns the bytes used, for `image_size`.
    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError>;
    /// Removes the machine and everything it held.
    async fn delete(&self, server_id: u64) -> Result<(), MachineError>;
    /// Removes a snapshot's copy of a disk.
    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError>;
}
