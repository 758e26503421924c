//! Hetzner Cloud servers as real machines with a disk: booted from their files as usual, or into the rescue system with the server's disk as `/dev/sda`, behind one fixed address.
//!
//! [`CloudMachines`] is the [`MachineHost`] the hcloud simulator needs for `enable_rescue`:
//!
//! - **Address**: each server gets a fixed loopback address at create, reported as
//!   `public_net.ipv4.ip`, and a forwarder on port 22 leads to whichever machine is up, so a client
//!   sees one server that reboots into the rescue system and back.
//! - **Normal boot**: an [`SshMachines`] machine whose root filesystem is the system image or
//!   snapshot the server was created from (the usual simulated server).
//! - **Rescue boot**: the dedicated-server simulator's rescue system ([`SshRobotMachines`]: the
//!   Debian rescue template with Hetzner's usual tools, and installimage), with one drive,
//!   `/dev/sda`, a sparse image of the type's disk size: the server's disk. Hetzner's rescue system
//!   is one system for both clouds.
//! - **The disk**: starts empty; once a rescue session has written a partition table to it,
//!   the disk is what the server is: its snapshots carry the disk image, later boots read the
//!   installed system back off it ([`crate::robot::read_installed_system`], as the dedicated
//!   servers' disk boot does), and servers created from such a snapshot start with a copy of it.
//!   Until then the server keeps the files it was created from.
//!
//! Known differences from the real service: the disk a rescue system sees starts empty rather
//! than holding the system image's partitions (nothing of caph-image reads it before writing it
//! whole), and a machine booted from a disk runs no cloud-init: it has the host key and root's
//! keys the disk holds, and what it changes stays in its own layer, not on the disk image.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::host::{CloudRescue, DiskSource, MachineError, MachineHost, MachineInfo, MachineSpec};
use crate::machine::{MachineLog, SshMachines, SshMachinesConfig};
use crate::robot::{
    RESCUE_PACKAGES, RescueBoot, RobotDrive, RobotMachineSpec, RobotMachines, SshRobotConfig,
    SshRobotMachines, allocate_address, spawn_forwarder,
};

/// The cloud rescue system's packages on top of the dedicated servers' rescue packages:
/// `qemu-img`, which writing a qcow2 image onto a disk needs.
pub const CLOUD_RESCUE_EXTRA_PACKAGES: &[&str] = &["qemu-utils"];

/// Where the cloud rescue template is cached: apart from the dedicated servers' one, whose
/// package list differs (one cache directory per package list, or each run would rebuild the
/// other's).
pub const CLOUD_RESCUE_TEMPLATE_CACHE: &str = "/var/cache/caph-sim/cloud-rescue";

/// The drive a cloud server's disk is in its rescue system.
const DISK_DEVICE: &str = "/dev/sda";

/// How [`CloudMachines`] is set up.
#[derive(Clone)]
pub struct CloudMachinesConfig {
    /// Where machines keep their files (see [`SshMachinesConfig`]); each of the two machine
    /// pools (normal boots, rescue and disk boots) gets its own instance below it.
    pub machines: SshMachinesConfig,
    /// A binary that runs the simulated installimage as `BINARY installimage ARGS...` (the
    /// rescue system carries installimage, as Hetzner's does).
    pub installimage_binary: PathBuf,
    /// Where the rescue template is cached; `None` builds it afresh for every instance.
    pub rescue_template_cache: Option<PathBuf>,
    /// Progress lines.
    pub log: Option<MachineLog>,
}

impl std::fmt::Debug for CloudMachinesConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CloudMachinesConfig")
            .field("machines", &self.machines)
            .field("installimage_binary", &self.installimage_binary)
            .field("rescue_template_cache", &self.rescue_template_cache)
            .finish_non_exhaustive()
    }
}

/// What a server's disk is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    /// The files it was created from, in its normal machine.
    Files,
    /// The disk image a rescue session wrote, or a snapshot's disk image.
    Image,
}

/// One server: its fixed address, its machines and its disk.
struct CloudServer {
    address: Ipv4Addr,
    hostname: String,
    /// Whether an [`SshMachines`] machine with the server's files exists (id = server id).
    files_machine: bool,
    files_address: Option<Ipv4Addr>,
    /// Whether the rescue and disk pool knows the server (it does after the first rescue boot,
    /// or from the start for a server made from a disk image).
    on_disk_pool: bool,
    disk_pool_address: Option<Ipv4Addr>,
    /// `x86` or `arm`, known once the server is in the rescue and disk pool.
    architecture: String,
    disk: Disk,
    /// Leads from `address` to the machine that is up.
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

/// A snapshot that carries a disk image.
#[derive(Debug, Clone)]
struct DiskSnapshot {
    image: PathBuf,
    /// `x86` or `arm`.
    architecture: String,
}

/// Cloud servers with a disk and a rescue system; see the module documentation.
pub struct CloudMachines {
    files: Arc<SshMachines>,
    /// Rescue systems and boots from a disk.
    disks: SshRobotMachines,
    /// Where disk-image snapshots are kept.
    snapshot_dir: PathBuf,
    servers: Mutex<HashMap<u64, CloudServer>>,
    snapshots: Mutex<HashMap<u64, DiskSnapshot>>,
}

impl std::fmt::Debug for CloudMachines {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CloudMachines")
            .field("files", &self.files)
            .field("snapshot_dir", &self.snapshot_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for CloudMachines {
    fn drop(&mut self) {
        for server in self.lock().values_mut() {
            if let Some(forwarder) = server.forwarder.take() {
                forwarder.abort();
            }
        }
    }
}

fn error(message: impl Into<String>) -> MachineError {
    MachineError(message.into())
}

/// The dedicated-server pool's name for an architecture.
fn robot_architecture(architecture: &str) -> &'static str {
    if architecture == "arm" {
        "aarch64"
    } else {
        "x86_64"
    }
}

impl CloudMachines {
    /// Checks the prerequisites (as [`SshMachines::new`]) and sets up both machine pools.
    pub fn new(config: CloudMachinesConfig) -> Result<CloudMachines, MachineError> {
        let files = Arc::new(SshMachines::new(SshMachinesConfig {
            // POST /servers answers at once, as the real API does, while the disk is prepared.
            background_disks: true,
            ..config.machines.clone()
        })?);
        let disk_machines = Arc::new(SshMachines::new(SshMachinesConfig {
            background_disks: false,
            ..config.machines
        })?);
        let snapshot_dir = files.instance_dir().join("cloud-disk-snapshots");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|failure| error(format!("creating {}: {failure}", snapshot_dir.display())))?;
        let mut packages: Vec<String> = RESCUE_PACKAGES
            .iter()
            .map(|name| name.to_string())
            .collect();
        packages.extend(
            CLOUD_RESCUE_EXTRA_PACKAGES
                .iter()
                .map(|name| name.to_string()),
        );
        let disks = SshRobotMachines::new(SshRobotConfig {
            machines: disk_machines,
            installimage_binary: config.installimage_binary,
            rescue_packages: packages,
            real_installimage: None,
            log: config.log,
        })
        .with_template_cache(config.rescue_template_cache);
        Ok(CloudMachines {
            files,
            disks,
            snapshot_dir,
            servers: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
        })
    }

    /// The machines of normal boots (the server id is the machine id there), for
    /// [`SshMachines::prepare_image`] and [`SshMachines::machine_root`].
    pub fn files(&self) -> &Arc<SshMachines> {
        &self.files
    }

    /// Builds (or finds in the cache) the rescue system of `architecture` (`x86` or `arm`) now,
    /// instead of at the first rescue boot (a cold cache is an apt run of a minute or more).
    pub async fn prepare_rescue(&self, architecture: &str) -> Result<(), MachineError> {
        self.disks
            .prepare_rescue(robot_architecture(architecture))
            .await
    }

    /// The disk image of a server, once a rescue system has shown it (sparse, the type's size).
    pub fn disk_image(&self, server_id: u64) -> Option<PathBuf> {
        let on_disk_pool = self
            .lock()
            .get(&server_id)
            .is_some_and(|server| server.on_disk_pool);
        if !on_disk_pool {
            return None;
        }
        self.disks
            .disk_dir(server_id)
            .map(|dir| dir.join(disk_file_name()))
    }

    /// The disk image a snapshot carries, when it was taken of a server whose disk a rescue
    /// system had written.
    pub fn snapshot_disk_image(&self, image_id: u64) -> Option<PathBuf> {
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&image_id)
            .map(|snapshot| snapshot.image.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CloudServer>> {
        self.servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn disk_snapshot(&self, image_id: u64) -> Option<DiskSnapshot> {
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&image_id)
            .cloned()
    }

    /// Registers the server with the rescue and disk pool, with a disk of `disk_bytes`.
    async fn join_disk_pool(
        &self,
        server_id: u64,
        architecture: &str,
        disk_bytes: u64,
    ) -> Result<PathBuf, MachineError> {
        let (known, hostname) = match self.lock().get(&server_id) {
            Some(server) => (server.on_disk_pool, server.hostname.clone()),
            None => return Err(error(format!("no machine for server {server_id}"))),
        };
        if !known {
            let address = self
                .disks
                .create(&RobotMachineSpec {
                    server_number: server_id,
                    server_name: hostname,
                    arch: robot_architecture(architecture).to_owned(),
                    uefi: false,
                    drives: vec![RobotDrive::new(DISK_DEVICE, disk_bytes)],
                })
                .await?;
            if let Some(server) = self.lock().get_mut(&server_id) {
                server.on_disk_pool = true;
                server.disk_pool_address = Some(address);
                server.architecture = architecture.to_owned();
            }
        }
        let image = self
            .disks
            .disk_dir(server_id)
            .map(|dir| dir.join(disk_file_name()))
            .ok_or_else(|| error(format!("server {server_id} has no disk")))?;
        // A disk copied from a snapshot of a smaller type grows to this type's size.
        let grown = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|file| {
                if file.metadata()?.len() < disk_bytes {
                    file.set_len(disk_bytes)?;
                }
                Ok(())
            });
        grown.map_err(|failure| error(format!("sizing {}: {failure}", image.display())))?;
        Ok(image)
    }

    /// Points the server's fixed address at `backend` (port 22).
    async fn forward(&self, server_id: u64, backend: Ipv4Addr) -> Result<(), MachineError> {
        let address = self.stop_forwarding(server_id)?;
        let forwarder = spawn_forwarder(
            address,
            SocketAddr::from((backend, 22)),
            Arc::new(std::sync::Mutex::new(None)),
        )
        .await?;
        if let Some(server) = self.lock().get_mut(&server_id) {
            server.forwarder = Some(forwarder);
        }
        Ok(())
    }

    /// Stops forwarding; returns the fixed address.
    fn stop_forwarding(&self, server_id: u64) -> Result<Ipv4Addr, MachineError> {
        let mut servers = self.lock();
        let Some(server) = servers.get_mut(&server_id) else {
            return Err(error(format!("no machine for server {server_id}")));
        };
        if let Some(forwarder) = server.forwarder.take() {
            forwarder.abort();
        }
        Ok(server.address)
    }
}

/// The disk's file in the rescue and disk pool's disk directory.
fn disk_file_name() -> String {
    format!("{}.img", DISK_DEVICE.rsplit('/').next().unwrap_or("sda"))
}

/// Whether a disk image starts with a partition table (an MBR's boot signature or a GPT header):
/// what a rescue session leaves when it wrote a disk image, and what a boot loader needs.
fn holds_partition_table(image: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 520];
    let read = std::fs::File::open(image).and_then(|mut file| file.read_exact(&mut head));
    read.is_ok() && (head[510..512] == [0x55, 0xaa] || &head[512..520] == b"EFI PART")
}

/// Bytes a file really takes (its allocated blocks): a sparse disk image's used part.
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map_or(0, |metadata| metadata.blocks() * 512)
}

/// Copies a disk image keeping its holes (and sharing blocks where the file system can).
async fn copy_sparse(from: &Path, to: &Path) -> Result<(), MachineError> {
    let output = tokio::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|failure| error(format!("running cp: {failure}")))?;
    if !output.status.success() {
        return Err(error(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl MachineHost for CloudMachines {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        let taken: Vec<Ipv4Addr> = self.lock().values().map(|server| server.address).collect();
        let address = allocate_address(&taken)?;
        let server_id = spec.server_id;
        let from_disk = match &spec.disk {
            DiskSource::Snapshot { image_id } => self.disk_snapshot(*image_id),
            _ => None,
        };
        self.lock().insert(
            server_id,
            CloudServer {
                address,
                hostname: spec.hostname.clone(),
                files_machine: false,
                files_address: None,
                on_disk_pool: false,
                disk_pool_address: None,
                architecture: String::new(),
                disk: Disk::Files,
                forwarder: None,
            },
        );
        let prepared = async {
            match from_disk {
                // The server's disk starts as a copy of the snapshot's.
                Some(snapshot) => {
                    let bytes = std::fs::metadata(&snapshot.image)
                        .map_err(|failure| {
                            error(format!("{}: {failure}", snapshot.image.display()))
                        })?
                        .len();
                    let disk = self
                        .join_disk_pool(server_id, &snapshot.architecture, bytes)
                        .await?;
                    let _ = std::fs::remove_file(&disk);
                    copy_sparse(&snapshot.image, &disk).await?;
                    if let Some(server) = self.lock().get_mut(&server_id) {
                        server.disk = Disk::Image;
                    }
                }
                None => {
                    let info = self.files.create(spec).await?;
                    if let Some(server) = self.lock().get_mut(&server_id) {
                        server.files_machine = true;
                        server.files_address = Some(info.ipv4);
                    }
                }
            }
            Ok::<(), MachineError>(())
        }
        .await;
        if let Err(failure) = prepared {
            self.lock().remove(&server_id);
            return Err(failure);
        }
        Ok(MachineInfo { ipv4: address })
    }

    async fn power_on(&self, server_id: u64) -> Result<(), MachineError> {
        let (disk, files_address, pool_address) = match self.lock().get(&server_id) {
            Some(server) => (server.disk, server.files_address, server.disk_pool_address),
            None => return Err(error(format!("no machine for server {server_id}"))),
        };
        match (disk, files_address, pool_address) {
            (Disk::Files, Some(files_address), _) => {
                self.files.power_on(server_id).await?;
                self.forward(server_id, files_address).await
            }
            (Disk::Image, _, Some(pool_address)) => {
                // What the disk holds, read off it as a booting system would.
                self.disks.boot_disk(server_id).await?;
                self.forward(server_id, pool_address).await
            }
            _ => Err(error(format!("server {server_id} has nothing to boot"))),
        }
    }

    async fn power_on_rescue(
        &self,
        server_id: u64,
        rescue: &CloudRescue,
    ) -> Result<(), MachineError> {
        self.join_disk_pool(server_id, &rescue.architecture, rescue.disk_bytes)
            .await?;
        let pool_address = self
            .lock()
            .get(&server_id)
            .and_then(|server| server.disk_pool_address)
            .ok_or_else(|| error(format!("server {server_id} has no rescue address")))?;
        self.disks
            .boot_rescue(
                server_id,
                &RescueBoot {
                    authorized_keys: rescue.authorized_keys.clone(),
                    password: format!("{:032x}", rand::random::<u128>()),
                },
            )
            .await?;
        self.forward(server_id, pool_address).await
    }

    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        self.stop_forwarding(server_id)?;
        let (files_machine, on_disk_pool) = match self.lock().get(&server_id) {
            Some(server) => (server.files_machine, server.on_disk_pool),
            None => return Err(error(format!("no machine for server {server_id}"))),
        };
        if files_machine {
            self.files.power_off(server_id).await?;
        }
        if on_disk_pool {
            self.disks.power_off(server_id).await?;
            // A disk a rescue session wrote a partition table to is the server from now on.
            if let Some(image) = self.disk_image(server_id)
                && holds_partition_table(&image)
                && let Some(server) = self.lock().get_mut(&server_id)
            {
                server.disk = Disk::Image;
            }
        }
        Ok(())
    }

    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError> {
        let (disk, architecture) = match self.lock().get(&server_id) {
            Some(server) => (server.disk, server.architecture.clone()),
            None => return Err(error(format!("no machine for server {server_id}"))),
        };
        if disk == Disk::Files {
            return self.files.snapshot(server_id, image_id).await;
        }
        let source = self
            .disk_image(server_id)
            .ok_or_else(|| error(format!("server {server_id} has no disk image")))?;
        let copy = self.snapshot_dir.join(format!("{image_id}.img"));
        copy_sparse(&source, &copy).await?;
        let bytes = allocated_bytes(&copy);
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                image_id,
                DiskSnapshot {
                    image: copy,
                    architecture,
                },
            );
        Ok(bytes)
    }

    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.power_off(server_id).await?;
        let Some(server) = self.lock().remove(&server_id) else {
            return Err(error(format!("no machine for server {server_id}")));
        };
        if server.on_disk_pool
            && let Some(dir) = self.disks.disk_dir(server_id)
        {
            // The disk goes with the server (the pool keeps only its record).
            let _ = std::fs::remove_file(dir.join(disk_file_name()));
        }
        if server.files_machine {
            self.files.delete(server_id).await?;
        }
        Ok(())
    }

    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError> {
        let removed = self
            .snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&image_id);
        match removed {
            Some(snapshot) => std::fs::remove_file(&snapshot.image).map_err(|failure| {
                error(format!("removing {}: {failure}", snapshot.image.display()))
            }),
            None => self.files.delete_image(image_id).await,
        }
    }
}
