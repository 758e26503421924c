//! Dedicated servers as real machines: the rescue system and the installed system behind one fixed loopback address, on top of [`SshMachines`].
//!
//! Every boot is a fresh [`SshMachines`] machine with its own sshd; a small TCP forwarder on the
//! server's fixed address (`server_ip`, port 22) leads to whichever machine is up, and refuses
//! connections while the server is down, so a client sees one server that reboots:
//!
//! - **Rescue**: the Debian system image plus [`RESCUE_PACKAGES`] (what installimage needs
//!   for disk images: `fdisk`, `zstd`, ...) and [`RESCUE_TOOLS`] (the usual tools, best effort),
//!   installed once with apt and kept in [`RESCUE_TEMPLATE_CACHE`]; without `fdisk`,
//!   installimage installs into a directory. Hostname `rescue`, a fresh host key, the
//!   activation's keys, and installimage at
//!   `/root/.oldroot/nfs/install/installimage`: a wrapper around a copy of the `caph-sim` binary
//!   (`caph-sim installimage ...`, run with its own libraries), with the machine facts in
//!   [`FACTS_PATH`](crate::installimage::FACTS_PATH). The server's disks are at
//!   `/root/.oldroot/disks` inside the rescue system.
//! - **Disk**: what installimage installed, copied out of the disk images (loop mounts, read
//!   only) or the install directory into a new machine: its hostname, its SSH host key (from
//!   its `/etc/ssh/ssh_host_ed25519_key`) and its root `authorized_keys`. An empty disk boots
//!   nothing.
//!
//! `reboot` on a machine (a script at `/usr/local/sbin/reboot`, since no init system runs there)
//! asks the simulator for a reboot: the server goes down and boots again after the `sw` reset
//! time, into the rescue system if an activation is pending.
//!
//! The disks persist between boots below the [`SshMachines`] instance directory, bind-mounted
//! into each rescue system while it runs and attached there as block devices.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use crate::host::{CloudInit, DiskSource, MachineError, MachineHost, MachineSpec};
use crate::installimage::{
    Drive, InstalledDisk, MANIFEST_NAME, MachineFacts, Manifest, RAN_PATH, RealInstallimage,
};
use crate::machine::{MachineDrive, MachineLog, SshMachines};
use crate::real_installimage::InstallimageArchive;
use sha2::{Digest as _, Sha256};

use super::{RescueBoot, RobotMachineSpec, RobotMachines};

/// Extra packages the rescue system gets on top of the Debian image, as on Hetzner's rescue.
pub const RESCUE_PACKAGES: &[&str] = &["fdisk", "zstd", "xz-utils", "bzip2", "dosfstools"];

/// The rest of the rescue system's usual tools, installed after [`RESCUE_PACKAGES`] on a best
/// effort basis (their absence only matters to clients that call them).
pub const RESCUE_TOOLS: &[&str] = &[
    "gdisk",
    "parted",
    "wget",
    "libarchive-tools",
    "hdparm",
    "mdadm",
    "lvm2",
    "systemd-container",
    // What the real installimage calls besides, as Hetzner's rescue system has it.
    "xfsprogs",
    "jq",
    "gpg-agent",
    "udev",
    "uuid-runtime",
    "locales",
];

/// The locale installimage runs under (`LC_ALL=en_US.UTF-8`): without it bsdtar cannot turn the
/// UTF-8 path names of PAX headers into file names, and the extraction fails.
const RESCUE_LOCALE: &str = "en_US.UTF-8";

/// Where the real installimage is unpacked in a rescue system, beside the simulated one at
/// [`INSTALLIMAGE_PATH`](crate::installimage::INSTALLIMAGE_PATH), which hands a run over to it
/// where the layout allows.
const REAL_INSTALLIMAGE_DIR: &str = "root/.oldroot/nfs/installimage-real";

/// Where the server's disks appear inside the rescue system.
const RESCUE_DISK_DIR: &str = "root/.oldroot/disks";

/// Machine ids in [`SshMachines`]: server number times this, plus a boot counter.
const BOOTS_PER_SERVER: u64 = 1_000_000;

/// The image id of the prepared rescue template, per architecture (far above snapshot ids the
/// hcloud simulator hands out).
const RESCUE_IMAGE_ID: u64 = u64::MAX - 16;

/// The prefix length of a server's address in the facts installimage reads.
const SERVER_PREFIX: u8 = 26;

/// Random addresses tried for a server's fixed address before giving up (the /10 is large).
const ADDRESS_ATTEMPTS: u32 = 64;

/// How an [`SshRobotMachines`] is set up.
#[derive(Clone)]
pub struct SshRobotConfig {
    /// The machines every boot runs on, without `background_disks`: a rescue system is set up
    /// in its machine's disk right after the create.
    pub machines: Arc<SshMachines>,
    /// A binary that runs the simulated installimage as `BINARY installimage ARGS...` (`caph-sim`,
    /// or `caph-image` for its `--sim` mode), copied into rescue systems with its libraries.
    pub installimage_binary: PathBuf,
    /// Packages added to the rescue template; default [`RESCUE_PACKAGES`].
    pub rescue_packages: Vec<String>,
    /// The real installimage, run instead of the simulated one for layouts this kernel can
    /// install (one drive, no RAID, LVM, encryption or UEFI); `None` simulates every run.
    pub real_installimage: Option<InstallimageArchive>,
    /// Progress lines.
    pub log: Option<MachineLog>,
}

impl std::fmt::Debug for SshRobotConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SshRobotConfig")
            .field("machines", &self.machines)
            .field("installimage_binary", &self.installimage_binary)
            .field("rescue_packages", &self.rescue_packages)
            .field("real_installimage", &self.real_installimage)
            .finish_non_exhaustive()
    }
}

/// Where a rescue system's disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Template {
    /// A snapshot of this [`SshMachines`] instance.
    Snapshot(u64),
    /// A cached tree, copied over a fresh machine's disk.
    Tree(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rescue,
    Disk,
}

struct Current {
    machine_id: u64,
    kind: Kind,
    forwarder: tokio::task::JoinHandle<()>,
    /// Watches for `reboot` run on the machine.
    watcher: tokio::task::JoinHandle<()>,
    /// The installed system read off the disk, which the machine's disk is layered on: held
    /// here only so that it is removed after the machine, when this record goes.
    _disk_tree: Option<ScratchDir>,
}

/// The file `reboot` on a machine creates (no init system runs there to act on it); the host
/// sees it and asks the simulator for the reboot.
const REBOOT_FLAG: &str = ".caph-sim-reboot";

/// `/usr/local/sbin/reboot` on every machine: first in root's PATH, ahead of systemd's.
const REBOOT_SCRIPT: &str = "#!/bin/sh\n# caph-sim: no init system runs on a simulated machine; the simulator reboots it.\ntouch /.caph-sim-reboot\necho 'caph-sim: the system is going down for reboot NOW!'\n";

/// How often the host looks for a reboot request: well below the time a client waits for a
/// reboot to begin.
const REBOOT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

struct Server {
    /// Bytes the next connection may carry from the client before it is cut (a fault).
    cut: Arc<Mutex<Option<u64>>>,
    spec: RobotMachineSpec,
    address: Ipv4Addr,
    disk_dir: PathBuf,
    boots: u64,
    current: Option<Current>,
    /// What the last rescue system said about the installimage it ran.
    installimage_ran: Option<String>,
}

/// [`RobotMachines`] on real sshd machines; see the module documentation.
pub struct SshRobotMachines {
    config: SshRobotConfig,
    servers: Mutex<HashMap<u64, Server>>,
    /// Architectures whose rescue template exists.
    templates: tokio::sync::Mutex<Vec<String>>,
    /// Built rescue templates kept across runs, so that apt runs once per machine, not per run.
    template_cache: Option<PathBuf>,
    reboots: tokio::sync::mpsc::UnboundedSender<u64>,
    reboot_requests: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
}

/// Where rescue templates are cached by default (beside SshMachines' root filesystem cache).
pub const RESCUE_TEMPLATE_CACHE: &str = "/var/cache/caph-sim/robot-rescue";

impl std::fmt::Debug for SshRobotMachines {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SshRobotMachines")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for SshRobotMachines {
    fn drop(&mut self) {
        for server in self.lock().values_mut() {
            if let Some(current) = server.current.take() {
                current.forwarder.abort();
                current.watcher.abort();
            }
        }
    }
}

fn machine_architecture(arch: &str) -> &'static str {
    if arch == "aarch64" { "arm" } else { "x86" }
}

fn error(message: impl Into<String>) -> MachineError {
    MachineError(message.into())
}

async fn command(
    program: &str,
    args: &[&std::ffi::OsStr],
    what: &str,
) -> Result<String, MachineError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|failure| error(format!("{what}: running {program}: {failure}")))?;
    if !output.status.success() {
        return Err(error(format!(
            "{what}: {program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl SshRobotMachines {
    pub fn new(config: SshRobotConfig) -> SshRobotMachines {
        let (reboots, reboot_requests) = tokio::sync::mpsc::unbounded_channel();
        SshRobotMachines {
            reboots,
            reboot_requests: Mutex::new(Some(reboot_requests)),
            config,
            servers: Mutex::new(HashMap::new()),
            templates: tokio::sync::Mutex::new(Vec::new()),
            template_cache: Some(PathBuf::from(RESCUE_TEMPLATE_CACHE)),
        }
    }

    /// Builds (or finds in the cache) the rescue system of `arch` (`x86_64` or `aarch64`)
    /// now, instead of during the first rescue boot: a cold cache means an apt run of a minute
    /// or more, which a caller may rather show as its own step than inside a reset wait.
    pub async fn prepare_rescue(&self, arch: &str) -> Result<(), MachineError> {
        self.ensure_template(arch).await.map(drop)
    }

    /// Keeps built rescue templates in `dir` (default [`RESCUE_TEMPLATE_CACHE`]), or builds them
    /// afresh for every instance with `None`.
    pub fn with_template_cache(mut self, dir: Option<PathBuf>) -> SshRobotMachines {
        self.template_cache = dir;
        self
    }

    /// The disk directory of a server on the host: a `<drive>.img` per drive, and `root/` and
    /// `installed.json` after a simulated install.
    pub fn disk_dir(&self, server_number: u64) -> Option<PathBuf> {
        self.lock()
            .get(&server_number)
            .map(|server| server.disk_dir.clone())
    }

    /// What the server's last rescue system printed about the installimage it ran ("caph-sim:
    /// running Hetzner's installimage (...) for real", or why the simulated one ran), once that
    /// rescue system is down; `None` before any installimage ran.
    pub fn installimage_ran(&self, server_number: u64) -> Option<String> {
        self.lock()
            .get(&server_number)
            .and_then(|server| server.installimage_ran.clone())
    }

    /// A fault: the next SSH connection to the server is cut once the client has sent `bytes`
    /// (an upload that breaks off midway). Applies to one connection, then clears.
    pub fn cut_next_connection_after(&self, server_number: u64, bytes: u64) {
        if let Some(server) = self.lock().get(&server_number) {
            *server
                .cut
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(bytes);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Server>> {
        self.servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log(&self, line: &str) {
        if let Some(log) = &self.config.log {
            log(line);
        }
    }

    /// Builds the rescue template once per architecture (the Debian image plus the rescue
    /// packages): a tree in the template cache, or without a cache a snapshot of [`SshMachines`].
    async fn ensure_template(&self, arch: &str) -> Result<Template, MachineError> {
        let architecture = machine_architecture(arch);
        let image_id = RESCUE_IMAGE_ID + u64::from(architecture == "arm");
        let tools: Vec<String> = RESCUE_TOOLS.iter().map(|name| name.to_string()).collect();
        let stamp = format!(
            "debian-12 {architecture} packages={} tools={} locale={RESCUE_LOCALE}\n",
            self.config.rescue_packages.join(","),
            tools.join(",")
        );
        // One directory per template content (as the root filesystem cache does), so that two
        // versions of this code never rebuild each other's template or remove one in use.
        let stamp_digest = hex::encode(Sha256::digest(stamp.as_bytes()));
        let cached = self
            .template_cache
            .as_ref()
            .map(|cache| cache.join(format!("{architecture}-{}", &stamp_digest[..8])));
        let is_cached = |cached: &Path| {
            std::fs::read_to_string(cached.join("complete"))
                .ok()
                .as_deref()
                == Some(stamp.as_str())
        };
        let mut templates = self.templates.lock().await;
        if let Some(cached) = &cached
            && is_cached(cached)
        {
            return Ok(Template::Tree(cached.join("root")));
        }
        if templates.iter().any(|known| known == architecture) {
            return Ok(Template::Snapshot(image_id));
        }
        let machines = &self.config.machines;
        let template_id = image_id;
        machines
            .create(MachineSpec {
                server_id: template_id,
                hostname: "rescue".into(),
                disk: DiskSource::System {
                    name: "debian-12".into(),
                    architecture: architecture.into(),
                },
                authorized_keys: Vec::new(),
                user_data: None,
                cloud_init: CloudInit::Off,
            })
            .await?;
        let root = machines
            .machine_root(template_id)
            .ok_or_else(|| error("the rescue template vanished"))?;
        // Two rounds: a package of the second that fails to configure in a chroot must not
        // cost the first, which installimage needs for disk images.
        for (round, packages) in [&self.config.rescue_packages, &tools]
            .into_iter()
            .enumerate()
        {
            if packages.is_empty() || (round == 1 && self.config.rescue_packages.is_empty()) {
                continue;
            }
            self.log(&format!(
                "rescue template ({architecture}): installing {}",
                packages.join(" ")
            ));
            let script = format!(
                "{}DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}",
                if round == 0 {
                    "apt-get update -qq && "
                } else {
                    ""
                },
                packages.join(" ")
            );
            if let Err(failure) = chroot_script(&root, &script).await {
                // installimage still works without them (into a directory, and no zstd).
                self.log(&format!(
                    "rescue template: packages not installed: {}",
                    failure.0
                ));
            }
        }
        let locale = format!(
            "if [ -f /etc/locale.gen ]; then sed -i 's/^# *{RESCUE_LOCALE} /{RESCUE_LOCALE} /' /etc/locale.gen && locale-gen; fi"
        );
        if let Err(failure) = chroot_script(&root, &locale).await {
            self.log(&format!(
                "rescue template: locale {RESCUE_LOCALE} not generated: {}",
                failure.0
            ));
        }
        if let Some(cached) = &cached {
            match store_template(&root, cached, &stamp).await {
                Ok(()) => {
                    machines.delete(template_id).await?;
                    return Ok(Template::Tree(cached.join("root")));
                }
                // Only a cost: the template becomes a snapshot of this instance instead.
                Err(failure) => self.log(&format!("rescue template: not cached: {}", failure.0)),
            }
        }
        let snapshot = machines.snapshot(template_id, image_id).await;
        let deleted = machines.delete(template_id).await;
        snapshot?;
        deleted?;
        templates.push(architecture.to_owned());
        Ok(Template::Snapshot(image_id))
    }

    /// Powers the current machine off, notes which installimage a rescue system ran, unmounts
    /// the disks from it and removes the machine.
    async fn stop(&self, server_number: u64) -> Result<(), MachineError> {
        let current = {
            let mut servers = self.lock();
            let Some(server) = servers.get_mut(&server_number) else {
                return Err(error(format!("no machine for server {server_number}")));
            };
            server.current.take()
        };
        let Some(current) = current else {
            return Ok(());
        };
        current.forwarder.abort();
        current.watcher.abort();
        let machines = &self.config.machines;
        machines.power_off(current.machine_id).await?;
        if current.kind == Kind::Rescue
            && let Some(root) = machines.machine_root(current.machine_id)
        {
            if let Ok(ran) = std::fs::read_to_string(root.join(RAN_PATH.trim_start_matches('/')))
                && let Some(server) = self.lock().get_mut(&server_number)
            {
                server.installimage_ran =
                    ran.split_once('\t').map(|(_, line)| line.trim().to_owned());
            }
            // The machine's removal would unmount it too; unmounted first, so the disks are
            // never below a tree being removed.
            let _ = command(
                "umount",
                &[root.join(RESCUE_DISK_DIR).as_os_str()],
                "unmounting the disks from the rescue system",
            )
            .await;
        }
        machines.delete(current.machine_id).await
    }

    fn next_machine_id(
        &self,
        server_number: u64,
    ) -> Result<(u64, RobotMachineSpec, Ipv4Addr, PathBuf), MachineError> {
        let mut servers = self.lock();
        let Some(server) = servers.get_mut(&server_number) else {
            return Err(error(format!("no machine for server {server_number}")));
        };
        server.boots += 1;
        Ok((
            server_number * BOOTS_PER_SERVER + server.boots,
            server.spec.clone(),
            server.address,
            server.disk_dir.clone(),
        ))
    }

    async fn start(
        &self,
        server_number: u64,
        machine_id: u64,
        kind: Kind,
        address: Ipv4Addr,
        backend: SocketAddr,
        disk_tree: Option<ScratchDir>,
    ) -> Result<(), MachineError> {
        let machines = &self.config.machines;
        let root = machines
            .machine_root(machine_id)
            .ok_or_else(|| error("the machine vanished"))?;
        let _ = std::fs::remove_file(root.join(REBOOT_FLAG));
        if let Err(failure) = write(
            &root.join("usr/local/sbin/reboot"),
            REBOOT_SCRIPT.as_bytes(),
            0o755,
        ) {
            let _ = machines.delete(machine_id).await;
            return Err(failure);
        }
        if let Err(failure) = machines.power_on(machine_id).await {
            let _ = machines.delete(machine_id).await;
            return Err(failure);
        }
        let sender = self.reboots.clone();
        let flag = root.join(REBOOT_FLAG);
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REBOOT_POLL).await;
                if std::fs::remove_file(&flag).is_ok() {
                    let _ = sender.send(server_number);
                    return;
                }
            }
        });
        let cut = self
            .lock()
            .get(&server_number)
            .map(|server| server.cut.clone())
            .unwrap_or_default();
        let forwarder = spawn_forwarder(address, backend, cut).await?;
        if let Some(server) = self.lock().get_mut(&server_number) {
            server.current = Some(Current {
                machine_id,
                kind,
                forwarder,
                watcher,
                _disk_tree: disk_tree,
            });
        }
        self.log(&format!(
            "server {server_number}: {} is up on {address}:22",
            if kind == Kind::Rescue {
                "the rescue system"
            } else {
                "the installed system"
            }
        ));
        Ok(())
    }
}

/// Forwards connections on `address:22` to `backend` until aborted; aborting closes them all.
/// A pending cut (see [`SshRobotMachines::cut_next_connection_after`]) applies to the next one.
pub(crate) async fn spawn_forwarder(
    address: Ipv4Addr,
    backend: SocketAddr,
    cut: Arc<Mutex<Option<u64>>>,
) -> Result<tokio::task::JoinHandle<()>, MachineError> {
    let listener = tokio::net::TcpListener::bind((address, 22))
        .await
        .map_err(|failure| error(format!("listening on {address}:22: {failure}")))?;
    Ok(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let limit = cut
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            connections.spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                match limit {
                    None => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    Some(limit) => forward_until(inbound, outbound, limit).await,
                }
            });
        }
    }))
}

/// Forwards both ways until the client has sent `limit` bytes, then drops both sides.
async fn forward_until(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    limit: u64,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let upstream = async {
        let mut sent = 0u64;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let room = usize::try_from(limit - sent)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            if room == 0 {
                return;
            }
            match client_read.read(&mut buffer[..room]).await {
                Ok(0) | Err(_) => return,
                Ok(count) => {
                    if server_write.write_all(&buffer[..count]).await.is_err() {
                        return;
                    }
                    sent += count as u64;
                }
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// Runs a shell script chrooted into `root` with /proc and /dev, in throwaway namespaces.
async fn chroot_script(root: &Path, script: &str) -> Result<String, MachineError> {
    const WRAPPER: &str = r#"root=$1; shift
mount --make-rprivate /
mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 125
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null
exec chroot "$root" /bin/sh -c "$1""#;
    let root_arg = root.as_os_str();
    command(
        "unshare",
        &[
            "--mount".as_ref(),
            "--pid".as_ref(),
            "--fork".as_ref(),
            "--kill-child".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            WRAPPER.as_ref(),
            "sh".as_ref(),
            root_arg,
            script.as_ref(),
        ],
        "rescue template",
    )
    .await
}

/// Copies a built template root into the cache: into a fresh directory first, renamed into
/// place with its stamp, so a concurrent run never sees half a template.
async fn store_template(root: &Path, cached: &Path, stamp: &str) -> Result<(), MachineError> {
    let parent = cached.parent().unwrap_or(cached);
    std::fs::create_dir_all(parent)
        .map_err(|failure| error(format!("creating {}: {failure}", parent.display())))?;
    let building = parent.join(format!(".building-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&building)
        .map_err(|failure| error(format!("creating {}: {failure}", building.display())))?;
    let result = async {
        command(
            "cp",
            &[
                "-a".as_ref(),
                "--reflink=auto".as_ref(),
                root.as_os_str(),
                building.join("root").as_os_str(),
            ],
            "caching the rescue template",
        )
        .await?;
        std::fs::write(building.join("complete"), stamp)
            .map_err(|failure| error(format!("stamping the rescue template: {failure}")))?;
        if cached.exists() {
            command(
                "rm",
                &["-rf".as_ref(), cached.as_os_str()],
                "replacing the cached template",
            )
            .await?;
        }
        std::fs::rename(&building, cached)
            .map_err(|failure| error(format!("caching the rescue template: {failure}")))
    }
    .await;
    if result.is_err() {
        let _ = command("rm", &["-rf".as_ref(), building.as_os_str()], "cleaning up").await;
    }
    result
}

/// A directory removed (with what is left in it) when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(parent: &Path, purpose: &str) -> Result<ScratchDir, MachineError> {
        let path = parent.join(format!("robot-{purpose}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&path)
            .map_err(|failure| error(format!("creating {}: {failure}", path.display())))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Never follow into a mount that is still there: unmount first, then remove.
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free address in 127.192.0.0/10 (clear of SshMachines' 127.64.0.0/10) for a server's fixed IP.
pub(crate) fn allocate_address(taken: &[Ipv4Addr]) -> Result<Ipv4Addr, MachineError> {
    for _ in 0..ADDRESS_ATTEMPTS {
        let address = Ipv4Addr::new(
            127,
            rand::random_range(192..=254),
            rand::random(),
            rand::random_range(2..=254),
        );
        if taken.contains(&address) {
            continue;
        }
        if std::net::TcpListener::bind((address, 22)).is_ok() {
            return Ok(address);
        }
    }
    Err(error(format!(
        "no free loopback address found after {ADDRESS_ATTEMPTS} tries"
    )))
}

/// The image file of a drive in a server's disk directory (`sda.img` for `/dev/sda`): the name
/// the simulated installimage writes too.
pub(crate) fn drive_image_name(device: &str) -> String {
    format!("{}.img", device.rsplit('/').next().unwrap_or("drive"))
}

/// Where the simulated installimage lives inside the rescue system, and its libraries below it.
const INSTALL_DIR: &str = "/root/.oldroot/nfs/install";

/// Puts the simulated installimage into a rescue system's `install` directory: the binary, the
/// shared libraries it was linked against and their loader (from `ldd`), and the `installimage`
/// wrapper. The binary runs through its own loader and libraries, not the rescue system's: it was
/// built on the host, whose C library may be newer than the rescue system's Debian 12, and an
/// arm64 rescue system has no x86_64 libraries at all (the host kernel runs the binary natively).
/// The programs installimage starts (sfdisk, mke2fs, tar) are the rescue system's own.
async fn install_installimage(binary: &Path, install: &Path) -> Result<(), MachineError> {
    let content = std::fs::read(binary)
        .map_err(|failure| error(format!("reading {}: {failure}", binary.display())))?;
    write(&install.join("caph-sim"), &content, 0o755)?;
    let libraries = {
        let binary = binary.to_path_buf();
        // Where ldd cannot run, the binary depends on the rescue system's libraries.
        tokio::task::spawn_blocking(move || crate::libraries::linked_libraries(&binary))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let mut loader = None;
    for library in &libraries {
        let Some(name) = library.file_name() else {
            continue;
        };
        let content = std::fs::read(library)
            .map_err(|failure| error(format!("reading {}: {failure}", library.display())))?;
        write(&install.join("lib").join(name), &content, 0o755)?;
        if name.to_string_lossy().starts_with("ld-") {
            loader = Some(name.to_string_lossy().into_owned());
        }
    }
    let exec = match loader {
        Some(loader) => format!(
            "exec {INSTALL_DIR}/lib/{loader} --library-path {INSTALL_DIR}/lib {INSTALL_DIR}/caph-sim installimage \"$@\""
        ),
        // A static binary needs neither.
        None => format!("exec {INSTALL_DIR}/caph-sim installimage \"$@\""),
    };
    write(
        &install.join("installimage"),
        format!("#!/bin/sh\n# caph-sim: the simulated installimage\n{exec}\n").as_bytes(),
        0o755,
    )
}

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), MachineError> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|failure| error(format!("creating {}: {failure}", parent.display())))?;
    }
    std::fs::write(path, content)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|failure| error(format!("writing {}: {failure}", path.display())))
}

/// Copies the installed system out of the disk into `target` (an emptied machine root).
async fn copy_installed(
    manifest: &Manifest,
    disk_dir: &Path,
    target: &Path,
) -> Result<(), MachineError> {
    match &manifest.disk {
        InstalledDisk::Directory { .. } => {
            let source = disk_dir.join("root");
            let mut from = source.into_os_string();
            from.push("/.");
            command(
                "cp",
                &["-a".as_ref(), from.as_os_str(), target.as_os_str()],
                "copying the installed system",
            )
            .await?;
        }
        InstalledDisk::Images { partitions } => {
            // The partitions as the installed fstab would mount them: shallow mount points first.
            let mut mounted: Vec<&crate::installimage::InstalledPartition> = partitions
                .iter()
                .filter(|partition| {
                    partition.mount.starts_with('/')
                        && partition.formatted
                        && partition.fs.starts_with("ext")
                })
                .collect();
            mounted.sort_by_key(|partition| {
                partition.mount.matches('/').count() + usize::from(partition.mount != "/")
            });
            for partition in mounted {
                let point = ScratchDir::new(disk_dir.parent().unwrap_or(disk_dir), "mount")?;
                // Moved into the partition's disk file, which lives in the server's disk dir.
                let image = disk_dir.join(partition.image.file_name().unwrap_or_default());
                let options = format!(
                    "ro,loop,offset={},sizelimit={}",
                    partition.start_bytes, partition.size_bytes
                );
                command(
                    "mount",
                    &[
                        "-o".as_ref(),
                        options.as_ref(),
                        image.as_os_str(),
                        point.path().as_os_str(),
                    ],
                    "mounting an installed partition",
                )
                .await?;
                let destination = target.join(partition.mount.trim_start_matches('/'));
                let _ = std::fs::create_dir_all(&destination);
                let mut from = point.path().as_os_str().to_owned();
                from.push("/.");
                let copied = command(
                    "cp",
                    &["-a".as_ref(), from.as_os_str(), destination.as_os_str()],
                    "copying the installed system",
                )
                .await;
                let _ = command("umount", &[point.path().as_os_str()], "unmounting").await;
                copied?;
            }
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl RobotMachines for SshRobotMachines {
    fn reboot_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<u64>> {
        self.reboot_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    async fn create(&self, spec: &RobotMachineSpec) -> Result<Ipv4Addr, MachineError> {
        let taken: Vec<Ipv4Addr> = self.lock().values().map(|server| server.address).collect();
        let address = allocate_address(&taken)?;
        let disk_dir = self
            .config
            .machines
            .instance_dir()
            .join(format!("robot-disk-{}", spec.server_number));
        std::fs::create_dir_all(&disk_dir)
            .map_err(|failure| error(format!("creating {}: {failure}", disk_dir.display())))?;
        for drive in &spec.drives {
            let image = disk_dir.join(drive_image_name(&drive.device));
            std::fs::File::create(&image)
                .and_then(|file| file.set_len(drive.size_bytes))
                .map_err(|failure| error(format!("creating {}: {failure}", image.display())))?;
        }
        self.lock().insert(
            spec.server_number,
            Server {
                cut: Arc::new(Mutex::new(None)),
                spec: spec.clone(),
                address,
                disk_dir,
                boots: 0,
                current: None,
                installimage_ran: None,
            },
        );
        Ok(address)
    }

    async fn power_off(&self, server_number: u64) -> Result<(), MachineError> {
        self.stop(server_number).await
    }

    async fn boot_rescue(
        &self,
        server_number: u64,
        rescue: &RescueBoot,
    ) -> Result<(), MachineError> {
        let booted = self.rescue_boot(server_number, rescue).await;
        if let Err(failure) = &booted {
            self.log(&format!(
                "server {server_number}: the rescue system did not boot: {failure}"
            ));
        }
        booted
    }

    async fn boot_disk(&self, server_number: u64) -> Result<(), MachineError> {
        let booted = self.disk_boot(server_number).await;
        if let Err(failure) = &booted {
            self.log(&format!(
                "server {server_number}: the installed system did not boot: {failure}"
            ));
        }
        booted
    }
}

impl SshRobotMachines {
    /// The rescue system: the template's disk with installimage, the activation's keys, the
    /// server's drives and the machine facts.
    async fn rescue_boot(
        &self,
        server_number: u64,
        rescue: &RescueBoot,
    ) -> Result<(), MachineError> {
        self.stop(server_number).await?;
        let (machine_id, spec, address, disk_dir) = self.next_machine_id(server_number)?;
        let template = self.ensure_template(&spec.arch).await?;
        let machines = &self.config.machines;
        let disk = match &template {
            Template::Snapshot(image_id) => DiskSource::Snapshot {
                image_id: *image_id,
            },
            Template::Tree(tree) => DiskSource::Tree { path: tree.clone() },
        };
        let info = machines
            .create(MachineSpec {
                server_id: machine_id,
                hostname: "rescue".into(),
                disk,
                authorized_keys: rescue.authorized_keys.clone(),
                user_data: None,
                cloud_init: CloudInit::Off,
            })
            .await?;
        let prepared = async {
            let root = machines
                .machine_root(machine_id)
                .ok_or_else(|| error("the rescue machine vanished"))?;
            let install = root.join("root/.oldroot/nfs/install");
            install_installimage(&self.config.installimage_binary, &install).await?;
            let real_installimage = match &self.config.real_installimage {
                Some(archive) => {
                    archive.unpack_into(&root.join(REAL_INSTALLIMAGE_DIR))?;
                    Some(RealInstallimage {
                        entry: PathBuf::from("/")
                            .join(REAL_INSTALLIMAGE_DIR)
                            .join("installimage"),
                        label: archive.label.clone(),
                    })
                }
                None => None,
            };
            crate::real_installimage::write_stubs(&root)?;
            // systemd-nspawn refuses to start without the host's machine id.
            write(
                &root.join("etc/machine-id"),
                format!("{:032x}\n", rand::random::<u128>()).as_bytes(),
                0o444,
            )?;
            let facts = MachineFacts {
                arch: spec.arch.clone(),
                uefi: spec.uefi,
                drives: spec
                    .drives
                    .iter()
                    .map(|drive| Drive {
                        device: drive.device.clone(),
                        size_bytes: drive.size_bytes,
                    })
                    .collect(),
                ipv4: address.to_string(),
                // A dedicated server's address in a /26, with the network's first address as
                // its gateway, as Hetzner assigns them.
                ipv4_prefix: SERVER_PREFIX,
                ipv4_gateway: Some(
                    Ipv4Addr::from((u32::from(address) & (u32::MAX << (32 - SERVER_PREFIX))) + 1)
                        .to_string(),
                ),
                ipv6: None,
                ipv6_gateway: None,
                interface: "eth0".into(),
                disk_dir: PathBuf::from("/").join(RESCUE_DISK_DIR),
                real_installimage,
            };
            let json = serde_json::to_vec_pretty(&facts)
                .map_err(|failure| error(format!("machine facts: {failure}")))?;
            write(&install.join("caph-sim-machine.json"), &json, 0o644)?;
            std::fs::create_dir_all(root.join("root/.oldroot/nfs/images"))
                .map_err(|failure| error(format!("images dir: {failure}")))?;
            let mut keys = rescue.authorized_keys.join("\n");
            keys.push('\n');
            write(
                &root.join("root/.ssh/authorized_keys"),
                keys.as_bytes(),
                0o600,
            )?;
            // Where the real rescue system keeps the activation's keys: installimage copies them
            // into the new system (and without them takes the rescue's root password).
            write(
                &root.join("root/.ssh/robot_user_keys"),
                keys.as_bytes(),
                0o600,
            )?;
            // The disks stay where they are on the host and appear in the rescue system (the
            // simulated installimage writes there); the real one sees them as block devices.
            let inside = root.join(RESCUE_DISK_DIR);
            std::fs::create_dir_all(&inside)
                .map_err(|failure| error(format!("creating {}: {failure}", inside.display())))?;
            command(
                "mount",
                &["--bind".as_ref(), disk_dir.as_os_str(), inside.as_os_str()],
                "showing the disks in the rescue system",
            )
            .await?;
            machines.set_uefi(machine_id, spec.uefi)?;
            machines.set_drives(
                machine_id,
                spec.drives
                    .iter()
                    .map(|drive| MachineDrive {
                        name: drive.device.trim_start_matches("/dev/").to_owned(),
                        image: disk_dir.join(drive_image_name(&drive.device)),
                        wwn: drive.wwn.clone(),
                        model: drive.model.clone(),
                        serial: drive.serial.clone(),
                    })
                    .collect(),
            )?;
            Ok::<(), MachineError>(())
        }
        .await;
        if let Err(failure) = prepared {
            let _ = machines.delete(machine_id).await;
            return Err(failure);
        }
        let backend = SocketAddr::from((info.ipv4, 22));
        self.start(
            server_number,
            machine_id,
            Kind::Rescue,
            address,
            backend,
            None,
        )
        .await
    }

    /// The installed system, read off the first drive that holds one (or from a simulated
    /// directory install).
    async fn disk_boot(&self, server_number: u64) -> Result<(), MachineError> {
        self.stop(server_number).await?;
        let disk_dir = self
            .disk_dir(server_number)
            .ok_or_else(|| error(format!("no machine for server {server_number}")))?;
        let spec = self
            .lock()
            .get(&server_number)
            .map(|server| server.spec.clone())
            .ok_or_else(|| error(format!("no machine for server {server_number}")))?;
        let manifest: Manifest = match std::fs::read_to_string(disk_dir.join(MANIFEST_NAME)) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|failure| error(format!("{MANIFEST_NAME}: {failure}")))?,
            // No simulated install: what the real installimage wrote, read from the drive.
            Err(_) => match super::disk::installed_system(&disk_dir, &spec).await? {
                Some(manifest) => manifest,
                None => {
                    self.log(&format!(
                        "server {server_number}: the disk is empty, nothing boots"
                    ));
                    return Ok(());
                }
            },
        };
        let (machine_id, _, address, _) = self.next_machine_id(server_number)?;
        // The installed system's host key and keys, read before the machine exists.
        let staging = ScratchDir::new(disk_dir.parent().unwrap_or(&disk_dir), "boot")?;
        copy_installed(&manifest, &disk_dir, staging.path()).await?;
        let key_path = staging.path().join("etc/ssh/ssh_host_ed25519_key");
        let user_data = match (
            std::fs::read_to_string(&key_path),
            std::fs::read_to_string(key_path.with_extension("pub")),
        ) {
            (Ok(private), Ok(public)) => Some(format!(
                "#cloud-config\nssh_keys:\n  ed25519_private: |\n{}\n  ed25519_public: {}\n",
                private
                    .lines()
                    .map(|line| format!("    {line}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                public.trim()
            )),
            _ => None,
        };
        let authorized_keys: Vec<String> =
            std::fs::read_to_string(staging.path().join("root/.ssh/authorized_keys"))
                .unwrap_or_default()
                .lines()
                .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect();
        let machines = &self.config.machines;
        let info = machines
            .create(MachineSpec {
                server_id: machine_id,
                hostname: manifest.hostname.clone(),
                // The machine's disk is what was installed, layered so that the installed
                // tree itself stays as read off the disk.
                disk: DiskSource::Tree {
                    path: staging.path().to_owned(),
                },
                authorized_keys,
                user_data,
                cloud_init: CloudInit::LocalSeed,
            })
            .await?;
        let replaced = async {
            let root = machines
                .machine_root(machine_id)
                .ok_or_else(|| error("the machine vanished"))?;
            write(
                &root.join("etc/hostname"),
                format!("{}\n", manifest.hostname).as_bytes(),
                0o644,
            )
        }
        .await;
        if let Err(failure) = replaced {
            let _ = machines.delete(machine_id).await;
            return Err(failure);
        }
        let backend = SocketAddr::from((info.ipv4, 22));
        self.start(
            server_number,
            machine_id,
            Kind::Disk,
            address,
            backend,
            Some(staging),
        )
        .await
    }
}
