//! The seam between the Robot simulator and the machines behind dedicated servers.
//!
//! The API decides *when* a server goes down and what it boots (the rescue system while an
//! activation is pending, else its disk); a [`RobotMachines`] decides what that means on this
//! computer. [`RobotAddressOnly`] only keeps an address and records what booted, for API tests.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::host::MachineError;

/// A drive of a dedicated server, as the rescue system sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotDrive {
    /// The device path, e.g. `/dev/sda` or `/dev/nvme0n1`.
    pub device: String,
    pub size_bytes: u64,
    /// The World Wide Name the rescue system's `lsblk -o WWN` shows (`0x5002538e...`).
    pub wwn: Option<String>,
    /// The model, as `lsblk -o MODEL` shows it.
    pub model: Option<String>,
    /// The serial number, as `lsblk -o SERIAL` shows it.
    pub serial: Option<String>,
}

impl RobotDrive {
    /// A drive with nothing known about it but its device and size.
    pub fn new(device: &str, size_bytes: u64) -> RobotDrive {
        RobotDrive {
            device: device.to_owned(),
            size_bytes,
            wwn: None,
            model: None,
            serial: None,
        }
    }
}

/// Everything a host needs to know about a dedicated server's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotMachineSpec {
    pub server_number: u64,
    pub server_name: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub uefi: bool,
    pub drives: Vec<RobotDrive>,
}

/// A rescue system boot: the keys of the activation and its root password.
#[derive(Clone, PartialEq, Eq)]
pub struct RescueBoot {
    /// OpenSSH public key lines to authorize for root.
    pub authorized_keys: Vec<String>,
    pub password: String,
}

impl Debug for RescueBoot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RescueBoot")
            .field("authorized_keys", &self.authorized_keys)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a machine is running, as [`RobotAddressOnly`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// Powered off or between a reset and the next boot.
    Off,
    /// The rescue system, with the activation's keys.
    Rescue { authorized_keys: Vec<String> },
    /// Whatever the disk holds.
    Disk,
}

/// The machines behind dedicated servers. Calls for one server never overlap.
#[async_trait::async_trait]
pub trait RobotMachines: Debug + Send + Sync {
    /// Prepares the machine at simulator start and returns its fixed address (`server_ip`,
    /// unique, in 127.0.0.0/8). The machine then boots its disk.
    async fn create(&self, spec: &RobotMachineSpec) -> Result<Ipv4Addr, MachineError>;
    /// The machine goes down (the start of a reset).
    async fn power_off(&self, server_number: u64) -> Result<(), MachineError>;
    /// Boots the rescue system: hostname `rescue`, a fresh host key, `keys` authorized, and
    /// installimage at `/root/.oldroot/nfs/install/installimage`.
    async fn boot_rescue(
        &self,
        server_number: u64,
        rescue: &RescueBoot,
    ) -> Result<(), MachineError>;
    /// Boots whatever installimage last installed (nothing answers while the disk is empty).
    async fn boot_disk(&self, server_number: u64) -> Result<(), MachineError>;
    /// Reboots asked for from inside machines (`reboot` run on one), as server numbers. The
    /// simulator takes the receiver once at start; `None` (the default) when a host cannot
    /// notice them.
    fn reboot_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<u64>> {
        None
    }
}

/// Addresses handed out by every [`RobotAddressOnly`] in this process: 127.3.0.1 upwards, clear
/// of the hcloud simulator's 127.1.x.x block and of the usual 127.0.0.1.
static NEXT_ADDRESS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A [`RobotMachines`] without machines: an address per server and a record of what booted.
#[derive(Debug, Default)]
pub struct RobotAddressOnly {
    machines: Mutex<HashMap<u64, (Ipv4Addr, Running, u32)>>,
}

impl RobotAddressOnly {
    /// What the server's machine runs now.
    pub fn running(&self, server_number: u64) -> Option<Running> {
        self.lock()
            .get(&server_number)
            .map(|(_, running, _)| running.clone())
    }

    /// How many times the machine booted (rescue or disk) since the simulator started.
    pub fn boots(&self, server_number: u64) -> u32 {
        self.lock()
            .get(&server_number)
            .map(|(_, _, boots)| *boots)
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Ipv4Addr, Running, u32)>> {
        self.machines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, server_number: u64, running: Running, boot: bool) -> Result<(), MachineError> {
        let mut machines = self.lock();
        let Some(machine) = machines.get_mut(&server_number) else {
            return Err(MachineError(format!(
                "no machine for server {server_number}"
            )));
        };
        machine.1 = running;
        if boot {
            machine.2 += 1;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl RobotMachines for RobotAddressOnly {
    async fn create(&self, spec: &RobotMachineSpec) -> Result<Ipv4Addr, MachineError> {
        // Usable host parts per /24 once .0 and .255 are skipped.
        const PER_BLOCK: u32 = 254;
        let index = NEXT_ADDRESS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let block = (3 << 8) + index / PER_BLOCK;
        if block > 0xffff {
            return Err(MachineError("loopback addresses exhausted".into()));
        }
        let address = Ipv4Addr::new(
            127,
            (block >> 8) as u8,
            (block & 0xff) as u8,
            (1 + index % PER_BLOCK) as u8,
        );
        self.lock()
            .insert(spec.server_number, (address, Running::Disk, 1));
        Ok(address)
    }

    async fn power_off(&self, server_number: u64) -> Result<(), MachineError> {
        self.set(server_number, Running::Off, false)
    }

    async fn boot_rescue(
        &self,
        server_number: u64,
        rescue: &RescueBoot,
    ) -> Result<(), MachineError> {
        let running = Running::Rescue {
            authorized_keys: rescue.authorized_keys.clone(),
        };
        self.set(server_number, running, true)
    }

    async fn boot_disk(&self, server_number: u64) -> Result<(), MachineError> {
        self.set(server_number, Running::Disk, true)
    }
}
