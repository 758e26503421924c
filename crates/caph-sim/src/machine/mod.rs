//! Simulated machines: each one a loopback address with a real OpenSSH `sshd`, optionally chrooted into its own root filesystem.
//!
//! [`SshMachines`] is the [`MachineHost`] that makes a simulated server reachable like a real one:
//!
//! - **Address**: a random `127.64.0.0/10` address, unique among live machines (never 127.0.0.1),
//!   with sshd on port 22, as `public_net.ipv4.ip` promises.
//! - **Disk**: an overlayfs mount whose read-only lower layers are a cached Debian root filesystem
//!   built by mmdebstrap (with [`ROOTFS_PACKAGES`]), plus the layers of the snapshot it was made
//!   from, and whose upper layer is the machine's own (the `layers` module): a create is a mount,
//!   a snapshot copies what the server changed, and no server sees another's writes. Block
//!   devices, where a machine has drives, come from the `drives` module. Only Debian's archive is reachable where this
//!   project is built and tested, so `ubuntu-22.04` and `ubuntu-24.04` are backed by Debian
//!   bookworm: plans that use apt, systemd and kmod run the same, anything needing Ubuntu's own
//!   packages or its `/etc/os-release` does not.
//! - **Boot** (`power_on`): `unshare --uts --mount --pid --fork --kill-child` gives the machine its
//!   own hostname (the server name), its own `/proc`, a read-only `/sys`, a minimal `/dev` (device
//!   nodes made with mknod, a private devpts, never the host's `/dev`), a tmpfs `/run` and the host's
//!   `resolv.conf`; the boot shell does what systemd would at boot (a machine id, cloud-init:
//!   `boot`) and stays the namespace's init, with `sshd -D` below it, `ChrootDirectory` set to the
//!   root filesystem, so every command runs inside it. The network is the host's, so loopback
//!   mirrors served by tests are reachable from inside.
//! - **Power off**: SIGKILL to the namespace's parent; `--kill-child` takes the namespace's init
//!   down with it, and with it every session and every mount, which live only in that namespace.
//! - **Host key** from cloud-config `ssh_keys` (as cloud-init does), else a fresh ed25519 one;
//!   **authorized keys** from the API plus cloud-config `ssh_authorized_keys`.
//!
//! Everything lives under `<state_dir>/<instance>/` (default `/var/lib/caph-sim`; sshd requires each
//! component of a chroot path to be root-owned and not group- or world-writable, hence not `/tmp`).
//! Dropping [`SshMachines`] kills every machine and removes that directory. A process killed with
//! SIGKILL runs no destructor: its machines keep running and its directory stays, marked by an
//! `owner` stamp (pid and start time) whose process is gone; the next [`SshMachines::new`] kills
//! those machines (recognised by their command lines) and removes the directory.
//!
//! The disk of a new machine is prepared by a task; `create` waits for it unless
//! [`SshMachinesConfig::background_disks`] is on, which the hcloud simulator wants so that
//! `POST /servers` answers at once even while the first root filesystem is being built.

mod boot;
mod cloud_config;
mod drives;
mod layers;
mod rootfs;
mod sys;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use cloud_config::{CloudConfig, CloudConfigError, HostKey, parse as parse_cloud_config};
pub use drives::MachineDrive;
pub use rootfs::ROOTFS_PACKAGES;

use crate::host::{CloudInit, DiskSource, MachineError, MachineHost, MachineInfo, MachineSpec};

/// The sshd binary every machine runs (the distribution's, as on the real servers).
pub const SSHD: &str = "/usr/sbin/sshd";

/// How long `power_on` waits for sshd to listen. sshd binds within milliseconds; a few seconds
/// cover a machine starting while two rootfs copies and a build compete for the disk.
const SSHD_LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long `power_off` waits for the address to refuse connections after the kill. The kernel
/// tears the namespace down in milliseconds; the bound only guards against a wedged process.
const SSHD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval while waiting for sshd to start or stop: short against both bounds above.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Random addresses tried before giving up on finding a free one. The /10 holds four million
/// addresses, so more than a handful of collisions means something else is wrong.
const ADDRESS_ATTEMPTS: u32 = 64;

/// Lines of sshd's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 10;

/// A sink for progress lines.
pub type MachineLog = Arc<dyn Fn(&str) + Send + Sync>;

/// Where [`SshMachines`] keeps things, and how it reports progress.
#[derive(Clone)]
pub struct SshMachinesConfig {
    /// Parent of the per-instance directory holding machines and snapshots. Every component must be
    /// root-owned and not group- or world-writable (sshd's `ChrootDirectory` rule).
    pub state_dir: PathBuf,
    /// Cache of built system root filesystems, shared by all instances and runs.
    pub rootfs_cache: PathBuf,
    /// Debian mirror for mmdebstrap (e.g. `http://deb.debian.org/debian`); `None` uses
    /// mmdebstrap's default.
    pub mirror: Option<String>,
    /// Progress lines (rootfs builds, machine starts). The library never prints.
    pub log: Option<MachineLog>,
    /// Let `create` return before the disk is copied (and, the first time, the system image
    /// built), as the real `POST /servers` answers at once; `power_on` and `snapshot` wait for it,
    /// and [`SshMachines::wait_for_disk`] does so explicitly. Off by default: then the disk is
    /// complete when `create` returns, which callers that work on [`SshMachines::machine_root`]
    /// right after creating rely on. Turn it on behind the hcloud API simulator, whose client
    /// would otherwise wait in `POST /servers` through a first root filesystem build (30 s to
    /// several minutes) and time out.
    pub background_disks: bool,
}

impl Default for SshMachinesConfig {
    fn default() -> SshMachinesConfig {
        SshMachinesConfig {
            state_dir: PathBuf::from("/var/lib/caph-sim"),
            rootfs_cache: PathBuf::from("/var/cache/caph-sim/rootfs"),
            mirror: None,
            log: None,
            background_disks: false,
        }
    }
}

impl fmt::Debug for SshMachinesConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SshMachinesConfig")
            .field("state_dir", &self.state_dir)
            .field("rootfs_cache", &self.rootfs_cache)
            .field("mirror", &self.mirror)
            .field("log", &self.log.as_ref().map(|_| "<callback>"))
            .field("background_disks", &self.background_disks)
            .finish()
    }
}

/// One machine's files and, while powered on, its namespace's parent process.
#[derive(Debug)]
struct Machine {
    address: Ipv4Addr,
    hostname: String,
    dir: PathBuf,
    disk: Disk,
    running: Option<tokio::process::Child>,
    /// Block devices the machine boots with (see [`SshMachines::set_drives`]).
    drives: Vec<MachineDrive>,
    /// The drives' loop devices while the machine runs.
    attached: Vec<drives::AttachedDrive>,
    /// The read-only layers below the machine's own (topmost first), once its disk is ready.
    lowers: Vec<PathBuf>,
    /// Whether and how its cloud-init runs at boot.
    cloud_init: CloudInit,
    /// Whether it shows `/sys/firmware/efi`, as a machine booted by UEFI does.
    uefi: bool,
}

/// A machine's root filesystem, copied (and the system image built, the first time) by a task;
/// `create` waits for it unless [`SshMachinesConfig::background_disks`] is on, and the first call
/// that needs the disk (power on, snapshot) waits for it in any case.
#[derive(Debug)]
enum Disk {
    /// The task that finds (or builds) the lower layers and mounts the overlay; its result is
    /// the machine's lower layers, topmost first.
    Preparing(tokio::task::JoinHandle<Result<Vec<PathBuf>, MachineError>>),
    Ready,
    Failed(String),
}

impl Machine {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

#[derive(Debug, Default)]
struct State {
    machines: HashMap<u64, Machine>,
    /// Each snapshot's layers, topmost (its own) first.
    images: HashMap<u64, Vec<PathBuf>>,
    /// Addresses handed out and not yet released (a machine being created is not in `machines`).
    addresses: HashSet<Ipv4Addr>,
}

/// Machines reachable over real SSH, each in its own root filesystem. Needs root, sshd, mmdebstrap
/// and unshare; [`SshMachines::new`] says what is missing.
pub struct SshMachines {
    instance_dir: PathBuf,
    cache: Arc<rootfs::RootfsCache>,
    log: Option<MachineLog>,
    background_disks: bool,
    state: Mutex<State>,
}

impl fmt::Debug for SshMachines {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machines = self.lock().machines.len();
        formatter
            .debug_struct("SshMachines")
            .field("instance_dir", &self.instance_dir)
            .field("rootfs_cache", &self.cache.dir)
            .field("machines", &machines)
            .finish()
    }
}

impl SshMachines {
    /// Checks the prerequisites, sweeps what killed runs left behind, and creates this instance's
    /// directory. Fails with a message naming everything that is missing.
    pub fn new(config: SshMachinesConfig) -> Result<SshMachines, MachineError> {
        let mut missing = Vec::new();
        if !sys::is_root() {
            missing.push(format!(
                "root (running as uid {}): sshd's ChrootDirectory, mount namespaces and mmdebstrap's root mode need it",
                rustix::process::geteuid().as_raw()
            ));
        }
        for (binary, package) in [
            (SSHD, "openssh-server"),
            ("/usr/bin/ssh-keygen", "openssh-client"),
            ("/usr/bin/mmdebstrap", "mmdebstrap"),
            ("/usr/bin/unshare", "util-linux"),
        ] {
            if !Path::new(binary).exists() {
                missing.push(format!("{binary} (Debian package {package})"));
            }
        }
        if !missing.is_empty() {
            return Err(MachineError(format!(
                "simulated SSH machines need: {}",
                missing.join("; ")
            )));
        }
        for dir in [&config.state_dir, &config.rootfs_cache] {
            if let Err(error) = create_private_dir_all(dir) {
                return Err(MachineError(format!("creating {}: {error}", dir.display())));
            }
        }
        if let Some(problem) = sys::chroot_path_problem(&config.state_dir) {
            return Err(MachineError(format!(
                "{} cannot hold chroots: {problem} (sshd requires every component of a ChrootDirectory path to be root-owned and not group- or world-writable)",
                config.state_dir.display()
            )));
        }
        // sshd's privilege separation directory; Debian's init script creates it at boot.
        if let Err(error) = std::fs::create_dir_all("/run/sshd") {
            return Err(MachineError(format!("creating /run/sshd: {error}")));
        }

        sweep_instances(&config.state_dir);
        let cache = Arc::new(rootfs::RootfsCache::new(
            config.rootfs_cache.clone(),
            config.mirror.clone(),
        ));
        cache.sweep();

        let stamp = sys::owner_stamp();
        let instance_name = format!("run-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let instance_dir = config.state_dir.join(instance_name);
        // The owner stamp first: whatever exists below it can then be swept after a kill.
        let created = create_private_dir_all(&instance_dir)
            .and_then(|()| std::fs::write(instance_dir.join("owner"), &stamp))
            .and_then(|()| create_private_dir_all(&instance_dir.join("machines")))
            .and_then(|()| create_private_dir_all(&instance_dir.join("images")));
        if let Err(error) = created {
            let _ = sys::remove_tree(&instance_dir);
            return Err(MachineError(format!(
                "creating {}: {error}",
                instance_dir.display()
            )));
        }
        Ok(SshMachines {
            instance_dir,
            cache,
            log: config.log,
            background_disks: config.background_disks,
            state: Mutex::new(State::default()),
        })
    }

    /// Builds (or finds in the cache) the root filesystem behind a system image, so that a later
    /// `create` is quick. `architecture` is `x86` or `arm`.
    pub async fn prepare_image(&self, name: &str, architecture: &str) -> Result<(), MachineError> {
        let image = rootfs::resolve(name, architecture)?;
        self.cache.ensure(&image, &self.log).await.map(|_| ())
    }

    /// This instance's directory (machines and snapshots live below it).
    pub fn instance_dir(&self) -> &Path {
        &self.instance_dir
    }

    /// Waits until a machine's disk is complete (see [`SshMachinesConfig::background_disks`]) and
    /// returns its root filesystem as seen from the host.
    pub async fn wait_for_disk(&self, server_id: u64) -> Result<PathBuf, MachineError> {
        self.disk_ready(server_id).await?;
        match self.machine_root(server_id) {
            Some(root) => Ok(root),
            None => Err(MachineError(format!("no machine for server {server_id}"))),
        }
    }

    /// The root filesystem of a machine, as seen from the host. Complete once `create` returned,
    /// unless [`SshMachinesConfig::background_disks`] is on (then see [`SshMachines::wait_for_disk`]).
    pub fn machine_root(&self, server_id: u64) -> Option<PathBuf> {
        self.lock().machines.get(&server_id).map(Machine::root)
    }

    /// Makes a powered-off machine look booted by UEFI from its next boot on: it then has a
    /// `/sys/firmware/efi` (empty: no variables), which is how programs such as installimage
    /// tell UEFI from BIOS.
    pub fn set_uefi(&self, server_id: u64, uefi: bool) -> Result<(), MachineError> {
        let mut state = self.lock();
        let Some(machine) = state.machines.get_mut(&server_id) else {
            return Err(MachineError(format!("no machine for server {server_id}")));
        };
        machine.uefi = uefi;
        Ok(())
    }

    /// Gives a powered-off machine block devices from its next boot on: each drive's image on a
    /// loop device, shown in the machine's `/dev`, `/sys/block` and `lsblk` under the drive's
    /// name, with partition nodes and `/dev/disk/by-uuid` links kept up to date (see the
    /// `drives` module). An empty list takes them away again.
    pub fn set_drives(
        &self,
        server_id: u64,
        drives: Vec<MachineDrive>,
    ) -> Result<(), MachineError> {
        let mut state = self.lock();
        let Some(machine) = state.machines.get_mut(&server_id) else {
            return Err(MachineError(format!("no machine for server {server_id}")));
        };
        if machine.running.is_some() {
            return Err(MachineError(format!(
                "server {server_id}: drives change only while the machine is off"
            )));
        }
        machine.drives = drives;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn log(&self, line: &str) {
        if let Some(log) = &self.log {
            log(line);
        }
    }

    /// A random free loopback address, reserved until released.
    fn allocate_address(&self) -> Result<Ipv4Addr, MachineError> {
        for _ in 0..ADDRESS_ATTEMPTS {
            let address = Ipv4Addr::new(
                127,
                rand::random_range(64..=127),
                rand::random(),
                rand::random_range(2..=254),
            );
            if self.lock().addresses.contains(&address) {
                continue;
            }
            // Free on this host right now (another instance, in this process or another, may use
            // the same range): binding port 22 is the test that matters for sshd.
            if TcpListener::bind((address, 22)).is_err() {
                continue;
            }
            if self.lock().addresses.insert(address) {
                return Ok(address);
            }
        }
        Err(MachineError(format!(
            "no free loopback address found after {ADDRESS_ATTEMPTS} tries"
        )))
    }

    fn release_address(&self, address: Ipv4Addr) {
        self.lock().addresses.remove(&address);
    }

    /// Writes the machine's ssh configuration and starts preparing its disk in the background.
    async fn create_inner(
        &self,
        spec: &MachineSpec,
        address: Ipv4Addr,
        dir: &Path,
    ) -> Result<tokio::task::JoinHandle<Result<Vec<PathBuf>, MachineError>>, MachineError> {
        let cloud = match &spec.user_data {
            Some(user_data) => match cloud_config::parse(user_data) {
                Ok(cloud) => cloud,
                Err(error) => {
                    return Err(MachineError(format!("server {}: {error}", spec.server_id)));
                }
            },
            None => CloudConfig::default(),
        };
        // Checked here, not in the background, so that a request this host can never serve
        // fails at once with what to install.
        let source = match &spec.disk {
            DiskSource::System { name, architecture } => {
                let image = rootfs::resolve(name, architecture)?;
                if let Some(problem) = rootfs::foreign_arch_problem(&image) {
                    return Err(MachineError(problem));
                }
                DiskOrigin::System(image)
            }
            DiskSource::Snapshot { image_id } => match self.lock().images.get(image_id) {
                Some(layers) => DiskOrigin::Layers(layers.clone()),
                None => {
                    return Err(MachineError(format!(
                        "snapshot {image_id} has no disk copy on this host"
                    )));
                }
            },
            DiskSource::Tree { path } => DiskOrigin::Layers(vec![path.clone()]),
        };
        if let Err(error) = create_private_dir_all(dir) {
            return Err(MachineError(format!("creating {}: {error}", dir.display())));
        }

        let ssh_dir = dir.join("ssh");
        if let Err(error) = create_private_dir_all(&ssh_dir) {
            return Err(MachineError(format!(
                "creating {}: {error}",
                ssh_dir.display()
            )));
        }
        let host_key_paths = install_host_keys(&ssh_dir, &cloud).await?;
        let mut authorized = String::new();
        for line in spec
            .authorized_keys
            .iter()
            .chain(cloud.authorized_keys.iter())
        {
            authorized.push_str(line.trim());
            authorized.push('\n');
        }
        write_private(&ssh_dir.join("authorized_keys"), &authorized)?;
        let mut config = format!(
            "# sshd of simulated server {id} ({hostname})\n\
             ListenAddress {address}:22\n\
             AuthorizedKeysFile {authorized}\n\
             ChrootDirectory {root}\n\
             PidFile none\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             Subsystem sftp internal-sftp\n\
             LogLevel INFO\n",
            id = spec.server_id,
            hostname = spec.hostname,
            authorized = ssh_dir.join("authorized_keys").display(),
            root = dir.join("root").display(),
        );
        for path in host_key_paths {
            config.push_str(&format!("HostKey {}\n", path.display()));
        }
        write_private(&ssh_dir.join("sshd_config"), &config)?;

        let cache = Arc::clone(&self.cache);
        let log = self.log.clone();
        let layers = layers::MachineLayers::in_dir(dir);
        let hostname = spec.hostname.clone();
        let seed = (spec.cloud_init == CloudInit::UserData)
            .then(|| (spec.server_id, spec.user_data.clone()));
        let preparing = tokio::spawn(async move {
            let lowers = match source {
                DiskOrigin::System(image) => vec![cache.ensure(&image, &log).await?],
                DiskOrigin::Layers(layers) => layers,
            };
            layers.mount(&lowers).await?;
            // What cloud-init writes on a real server: the hostname.
            write_file(&layers.root.join("etc/hostname"), &format!("{hostname}\n"))?;
            // What Hetzner's metadata service serves the server's cloud-init.
            if let Some((server_id, user_data)) = seed
                && boot::has_cloud_init(&layers.root)
            {
                boot::write_cloud_seed(&layers.root, server_id, &hostname, user_data.as_deref())?;
            }
            Ok(lowers)
        });
        Ok(preparing)
    }

    /// Waits until the machine's disk is mounted; its error, if that failed.
    async fn disk_ready(&self, server_id: u64) -> Result<(), MachineError> {
        let preparing = {
            let mut state = self.lock();
            let Some(machine) = state.machines.get_mut(&server_id) else {
                return Err(MachineError(format!("no machine for server {server_id}")));
            };
            match std::mem::replace(&mut machine.disk, Disk::Ready) {
                Disk::Ready => return Ok(()),
                Disk::Failed(message) => {
                    machine.disk = Disk::Failed(message.clone());
                    return Err(MachineError(message));
                }
                Disk::Preparing(handle) => handle,
            }
        };
        // Calls for one server never overlap, so nobody else waits on this handle meanwhile.
        let outcome = match preparing.await {
            Ok(Ok(lowers)) => Ok(lowers),
            Ok(Err(error)) => Err(format!("server {server_id}: preparing its disk: {error}")),
            Err(error) => Err(format!("server {server_id}: preparing its disk: {error}")),
        };
        match outcome {
            Ok(lowers) => {
                if let Some(machine) = self.lock().machines.get_mut(&server_id) {
                    machine.lowers = lowers;
                }
                Ok(())
            }
            Err(message) => {
                if let Some(machine) = self.lock().machines.get_mut(&server_id) {
                    machine.disk = Disk::Failed(message.clone());
                }
                Err(MachineError(message))
            }
        }
    }

    fn spawn_machine(
        &self,
        server_id: u64,
        dir: &Path,
        hostname: &str,
        attached: &[drives::AttachedDrive],
        cloud_init: bool,
        uefi: bool,
    ) -> Result<tokio::process::Child, MachineError> {
        let log_path = dir.join("sshd.log");
        let log_file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            Ok(file) => file,
            Err(error) => {
                return Err(MachineError(format!(
                    "opening {}: {error}",
                    log_path.display()
                )));
            }
        };
        let mut command = tokio::process::Command::new("unshare");
        command
            .args([
                "--uts",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--",
            ])
            .args(["/bin/sh", "-c", BOOT_SCRIPT, "caph-sim-boot"])
            .arg(dir.join("root"))
            .arg(dir.join("ssh/sshd_config"))
            .arg(hostname)
            .arg(SSHD)
            .env("CAPH_SIM_DRIVES", drives::boot_words(attached))
            .env("CAPH_SIM_DRIVE_SETUP", drives::BOOT_FRAGMENT)
            .env("CAPH_SIM_UDEV_DATA", dir.join("udev"))
            .env("CAPH_SIM_SYSTEM_BOOT", boot::BOOT_FRAGMENT)
            .env("CAPH_SIM_CLOUD_INIT", if cloud_init { "1" } else { "" })
            .env("CAPH_SIM_UEFI", if uefi { "1" } else { "" })
            .env("CAPH_SIM_BOOT_LOG", dir.join("boot.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Keep the machine out of the terminal's process group: Ctrl-C meant for a test runner
            // reaches the runner, which then tears machines down in order.
            .process_group(0)
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return Err(MachineError(format!(
                    "server {server_id}: starting unshare: {error}"
                )));
            }
        };
        if let Some(pid) = child.id() {
            let stamp = format!("{pid} {}\n", sys::process_start_time(pid).unwrap_or(0));
            let _ = std::fs::write(dir.join("machine.pid"), stamp);
        }
        Ok(child)
    }
}

/// The machine's boot, run by `/bin/sh` as the first process of its namespaces, which it stays.
/// Arguments: root filesystem, sshd config, hostname, sshd binary.
const BOOT_SCRIPT: &str = r#"set -eu
root=$1 config=$2 name=$3 sshd=$4
hostname "$name"
mount --make-rprivate /
mkdir -p "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
# The network namespace and most sysctls are the host's: a plan's `sysctl --system` must not change
# them, so /proc/sys is read-only in here, as in a container (the plan then warns and goes on).
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=0755,size=1m dev "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  saved_ifs=$IFS; IFS=:; set -- $node; IFS=$saved_ifs
  mknod -m 0666 "$root/dev/$1" c "$2" "$3"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=0755 run "$root/run"
# A machine booted by UEFI has /sys/firmware/efi.
if [ -n "${CAPH_SIM_UEFI:-}" ]; then
  mount -t tmpfs -o mode=0755,size=64k firmware "$root/sys/firmware"
  mkdir -p "$root/sys/firmware/efi/efivars"
fi
if [ -n "${CAPH_SIM_DRIVES:-}" ]; then
  eval "$CAPH_SIM_DRIVE_SETUP"
fi
if [ -e /etc/resolv.conf ]; then
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
fi
eval "$CAPH_SIM_SYSTEM_BOOT"
# This shell stays the machine's first process, as an init would, with sshd below it: sshd
# rewrites its environment for its process title, and programs read process 1's environment
# (cloud-init, to tell a container from a machine).
"$sshd" -D -e -f "$config" &
wait $!
"#;

/// Where a new machine's disk comes from.
enum DiskOrigin {
    /// A system image's cached root filesystem, built first where needed.
    System(rootfs::SystemImage),
    /// Layers that exist already (a snapshot's, or a tree of the host's), topmost first.
    Layers(Vec<PathBuf>),
}

#[async_trait::async_trait]
impl MachineHost for SshMachines {
    async fn create(&self, spec: MachineSpec) -> Result<MachineInfo, MachineError> {
        let address = self.allocate_address()?;
        let dir = self
            .instance_dir
            .join("machines")
            .join(spec.server_id.to_string());
        let preparing = match self.create_inner(&spec, address, &dir).await {
            Ok(preparing) => preparing,
            Err(error) => {
                let _ = sys::remove_tree(&dir);
                self.release_address(address);
                return Err(error);
            }
        };
        let machine = Machine {
            address,
            hostname: spec.hostname.clone(),
            dir,
            disk: Disk::Preparing(preparing),
            running: None,
            drives: Vec::new(),
            attached: Vec::new(),
            lowers: Vec::new(),
            cloud_init: spec.cloud_init,
            uefi: false,
        };
        self.lock().machines.insert(spec.server_id, machine);
        if !self.background_disks
            && let Err(error) = self.disk_ready(spec.server_id).await
        {
            if let Some(machine) = self.lock().machines.remove(&spec.server_id) {
                let _ = sys::remove_tree(&machine.dir);
            }
            self.release_address(address);
            return Err(error);
        }
        Ok(MachineInfo { ipv4: address })
    }

    async fn power_on(&self, server_id: u64) -> Result<(), MachineError> {
        self.disk_ready(server_id).await?;
        let (dir, hostname, address, running, machine_drives, cloud_init, uefi) = {
            let state = self.lock();
            let Some(machine) = state.machines.get(&server_id) else {
                return Err(MachineError(format!("no machine for server {server_id}")));
            };
            (
                machine.dir.clone(),
                machine.hostname.clone(),
                machine.address,
                machine.running.is_some(),
                machine.drives.clone(),
                boot::runs_cloud_init(machine.cloud_init, &machine.root()),
                machine.uefi,
            )
        };
        if running {
            return Ok(());
        }
        let started = Instant::now();
        let attached = drives::attach_all(&machine_drives).await?;
        let spawned = write_udev_data(&dir, &machine_drives).and_then(|()| {
            self.spawn_machine(server_id, &dir, &hostname, &attached, cloud_init, uefi)
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                drives::detach_all(&attached).await;
                return Err(error);
            }
        };
        let target = SocketAddr::from((address, 22));
        loop {
            if TcpStream::connect_timeout(&target, POLL_INTERVAL).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                drives::detach_all(&attached).await;
                return Err(MachineError(format!(
                    "server {server_id}: sshd on {target} exited at boot ({status}): {}",
                    log_tail(&dir.join("sshd.log"))
                )));
            }
            if started.elapsed() > SSHD_LISTEN_TIMEOUT {
                let _ = child.start_kill();
                let _ = child.wait().await;
                drives::detach_all(&attached).await;
                return Err(MachineError(format!(
                    "server {server_id}: sshd on {target} did not listen within {SSHD_LISTEN_TIMEOUT:?}: {}",
                    log_tail(&dir.join("sshd.log"))
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.log(&format!(
            "server {server_id} ({hostname}) is up on {target} after {:.0?}",
            started.elapsed()
        ));
        if let Some(machine) = self.lock().machines.get_mut(&server_id) {
            machine.running = Some(child);
            machine.attached = attached;
        }
        Ok(())
    }

    async fn power_off(&self, server_id: u64) -> Result<(), MachineError> {
        let (child, address, dir, attached) = {
            let mut state = self.lock();
            let Some(machine) = state.machines.get_mut(&server_id) else {
                return Err(MachineError(format!("no machine for server {server_id}")));
            };
            (
                machine.running.take(),
                machine.address,
                machine.dir.clone(),
                std::mem::take(&mut machine.attached),
            )
        };
        let Some(mut child) = child else {
            return Ok(());
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = std::fs::remove_file(dir.join("machine.pid"));
        drives::detach_all(&attached).await;
        // The namespace's init dies by PDEATHSIG right after; wait until the address refuses, so
        // that "off" means what a client will observe.
        let target = SocketAddr::from((address, 22));
        let until = Instant::now() + SSHD_STOP_TIMEOUT;
        while TcpStream::connect_timeout(&target, POLL_INTERVAL).is_ok() {
            if Instant::now() > until {
                return Err(MachineError(format!(
                    "server {server_id}: {target} still accepts connections {SSHD_STOP_TIMEOUT:?} after power off"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    async fn snapshot(&self, server_id: u64, image_id: u64) -> Result<u64, MachineError> {
        self.disk_ready(server_id).await?;
        let (dir, lowers) = match self.lock().machines.get(&server_id) {
            Some(machine) => (machine.dir.clone(), machine.lowers.clone()),
            None => return Err(MachineError(format!("no machine for server {server_id}"))),
        };
        let machine_layers = layers::MachineLayers::in_dir(&dir);
        let image_dir = self.instance_dir.join("images").join(image_id.to_string());
        if let Err(error) = create_private_dir_all(&image_dir) {
            return Err(MachineError(format!(
                "creating {}: {error}",
                image_dir.display()
            )));
        }
        // What the server changed becomes the snapshot's own layer, on top of the layers its
        // disk started from. The machine's mounts (/proc, /dev, /run) live in its own
        // namespace and never reach the upper layer: only the disk is kept, as a snapshot of a
        // real server holds.
        let own_layer = image_dir.join("layer");
        if let Err(error) = machine_layers.copy_upper_to(&own_layer).await {
            let _ = sys::remove_tree(&image_dir);
            return Err(error);
        }
        let measured_root = machine_layers.root.clone();
        let bytes = match tokio::task::spawn_blocking(move || sys::tree_bytes(&measured_root)).await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                let _ = sys::remove_tree(&image_dir);
                return Err(MachineError(format!(
                    "measuring snapshot {image_id}: {error}"
                )));
            }
            Err(error) => {
                let _ = sys::remove_tree(&image_dir);
                return Err(MachineError(format!(
                    "measuring snapshot {image_id}: {error}"
                )));
            }
        };
        let mut image_layers = vec![own_layer];
        image_layers.extend(lowers);
        self.lock().images.insert(image_id, image_layers);
        Ok(bytes)
    }

    async fn delete(&self, server_id: u64) -> Result<(), MachineError> {
        self.power_off(server_id).await?;
        // A copy still running would write into the directory being removed; let it finish
        // (its outcome no longer matters).
        let _ = self.disk_ready(server_id).await;
        let Some(machine) = self.lock().machines.remove(&server_id) else {
            return Err(MachineError(format!("no machine for server {server_id}")));
        };
        let dir = machine.dir.clone();
        // Unmounts the overlay (lazily: the machine's namespace may still be going away) and
        // removes what the machine wrote; the layers below it stay for others.
        let removed = tokio::task::spawn_blocking(move || sys::remove_tree(&dir)).await;
        self.release_address(machine.address);
        self.remove_unused_image_layers().await;
        match removed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(MachineError(format!(
                "server {server_id}: removing its disk: {error}"
            ))),
            Err(error) => Err(MachineError(format!(
                "server {server_id}: removing its disk: {error}"
            ))),
        }
    }

    async fn delete_image(&self, image_id: u64) -> Result<(), MachineError> {
        if self.lock().images.remove(&image_id).is_none() {
            return Err(MachineError(format!("no disk copy for image {image_id}")));
        }
        // Its layer goes once nothing stands on it: a server created from the snapshot keeps
        // its disk, as on Hetzner, where deleting an image leaves its servers alone.
        self.remove_unused_image_layers().await;
        Ok(())
    }
}

impl SshMachines {
    /// Removes the layer of every deleted snapshot that no machine and no other snapshot uses.
    async fn remove_unused_image_layers(&self) {
        let unused: Vec<PathBuf> = {
            let state = self.lock();
            let used: HashSet<&PathBuf> = state
                .machines
                .values()
                .flat_map(|machine| machine.lowers.iter())
                .chain(state.images.values().flatten())
                .collect();
            std::fs::read_dir(self.instance_dir.join("images"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|entry| entry.path())
                        .filter(|dir| !used.contains(&dir.join("layer")))
                        .collect()
                })
                .unwrap_or_default()
        };
        for dir in unused {
            let _ = tokio::task::spawn_blocking(move || sys::remove_tree(&dir)).await;
        }
    }
}

impl Drop for SshMachines {
    fn drop(&mut self) {
        let mut state = self.lock();
        for machine in state.machines.values_mut() {
            if let Disk::Preparing(handle) = &machine.disk {
                // Dropping the copy's future kills its `cp` (kill_on_drop).
                handle.abort();
            }
            if let Some(mut child) = machine.running.take() {
                // SIGKILL to unshare; `--kill-child` takes the namespace (sshd, sessions, mounts)
                // with it. tokio reaps the child in the background.
                let _ = child.start_kill();
            }
        }
        // Loop devices still held by a dying namespace detach themselves once released;
        // remove_tree unmounts the machines' overlays before it removes anything.
        drives::sweep_loops_under(&self.instance_dir);
        state.machines.clear();
        drop(state);
        let _ = sys::remove_tree(&self.instance_dir);
    }
}

/// Removes instance directories whose owning process is gone (a killed test run).
fn sweep_instances(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let instance = entry.path();
        let Ok(stamp) = std::fs::read_to_string(instance.join("owner")) else {
            continue;
        };
        if sys::owner_alive(&stamp) {
            continue;
        }
        // A machine's unshare dies with the test process only if it was killed too; a survivor
        // (its parent gone, itself still running) is killed here, recognised by its command line.
        if let Ok(machines) = std::fs::read_dir(instance.join("machines")) {
            for machine in machines.flatten() {
                if let Ok(pid_stamp) = std::fs::read_to_string(machine.path().join("machine.pid")) {
                    sys::kill_if_ours(&pid_stamp, &machine.path().to_string_lossy());
                }
            }
        }
        drives::sweep_loops_under(&instance);
        let _ = sys::remove_tree(&instance);
    }
}

/// Creates `dir` and its missing parents as root-owned 0755 directories (never group- or
/// world-writable, whatever the umask, as sshd's chroot rule demands).
fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

fn write_private(path: &Path, content: &str) -> Result<(), MachineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(content.as_bytes()));
    match written {
        Ok(()) => Ok(()),
        Err(error) => Err(MachineError(format!("writing {}: {error}", path.display()))),
    }
}

/// Writes udev's database entry of each drive that has one into `<dir>/udev/<name>`, where the
/// boot copies it from.
fn write_udev_data(dir: &Path, machine_drives: &[MachineDrive]) -> Result<(), MachineError> {
    let udev_dir = dir.join("udev");
    let _ = std::fs::remove_dir_all(&udev_dir);
    for drive in machine_drives {
        if let Some(data) = drives::udev_data(drive) {
            create_private_dir_all(&udev_dir).map_err(|error| {
                MachineError(format!("creating {}: {error}", udev_dir.display()))
            })?;
            write_file(&udev_dir.join(&drive.name), &data)?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, content: &str) -> Result<(), MachineError> {
    match std::fs::write(path, content) {
        Ok(()) => Ok(()),
        Err(error) => Err(MachineError(format!("writing {}: {error}", path.display()))),
    }
}

/// Writes the host keys from cloud-config (checking that each public half matches its private
/// half, as a mismatch would make pinning fail mysteriously), or generates a fresh ed25519 key.
/// Returns the private key paths for sshd's `HostKey` lines.
async fn install_host_keys(
    ssh_dir: &Path,
    cloud: &CloudConfig,
) -> Result<Vec<PathBuf>, MachineError> {
    let mut paths = Vec::new();
    for key in &cloud.host_keys {
        let path = ssh_dir.join(&key.file_name);
        let mut private = key.private.clone();
        if !private.ends_with('\n') {
            private.push('\n');
        }
        write_private(&path, &private)?;
        let derived = ssh_keygen(&["-y", "-f"], &path).await.map_err(|error| {
            MachineError(format!(
                "user_data: ssh_keys.{}_private is not a usable private key: {error}",
                key.key_type
            ))
        })?;
        if let Some(public) = &key.public {
            if key_material(public) != key_material(&derived) {
                return Err(MachineError(format!(
                    "user_data: ssh_keys.{kind}_public does not belong to ssh_keys.{kind}_private",
                    kind = key.key_type
                )));
            }
            write_file(
                &path.with_file_name(format!("{}.pub", key.file_name)),
                &format!("{}\n", public.trim()),
            )?;
        }
        paths.push(path);
    }
    if paths.is_empty() {
        let path = ssh_dir.join("ssh_host_ed25519_key");
        ssh_keygen(
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "caph-sim host key",
                "-f",
            ],
            &path,
        )
        .await
        .map_err(|error| MachineError(format!("generating a host key: {error}")))?;
        paths.push(path);
    }
    Ok(paths)
}

/// The type and base64 fields of a public key line (the comment does not identify the key).
fn key_material(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn ssh_keygen(args: &[&str], path: &Path) -> Result<String, String> {
    let output = tokio::process::Command::new("ssh-keygen")
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| format!("running ssh-keygen: {error}"))?;
    if !output.status.success() {
        // ssh-keygen never echoes key material in its errors.
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ")
}
