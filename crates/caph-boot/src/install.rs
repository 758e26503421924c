//! A tarball installed on a local disk the way Hetzner's installimage installs it on a dedicated
//! server with one drive and its default layout (read from its source: `functions.sh`,
//! `debian.sh`, `ubuntu.sh`):
//!
//! - an MS-DOS partition table with `/boot` (ext4, 1024 MiB) and `/` (ext4, the rest), as
//!   Cluster API Provider Hetzner's templates lay out a node;
//! - the tarball extracted with GNU tar and installimage's options (`--anchored --numeric-owner
//!   --xattrs`, capabilities and SELinux labels, without sys, proc and dev);
//! - `/etc/fstab` by UUID, the hostname, `/etc/hosts`, the network configuration for the
//!   interface the machine has, Hetzner's resolvers and sysctls ([`crate::installimage`]);
//! - a machine id made for the node, and a new SSH host key of each type whose file the image
//!   carries (`generate_new_sshkeys`);
//! - `update-initramfs -u`, then GRUB: installimage's kernel command line, `grub-mkconfig` and
//!   `grub-install` into the MBR, all run chrooted in the new system;
//! - then the caller's files (the NoCloud seed, as CAPH's post-install script writes it).
//!
//! The disk is a sparse file on a loop device; everything that mounts runs in a mount namespace
//! of its own ([`crate::namespace`]), with a `/dev` of its own for the chroot that holds only the
//! disk's nodes and the `/dev/disk/by-uuid` links udev would make (so `grub-mkconfig` writes
//! `root=UUID=...`), never the host's devices.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use caph_core::compression::Compression;

use crate::BootError;
use crate::installimage::{self, Network};
use crate::loop_device::LoopDevice;
use crate::tarball::TarballContents;

/// The `/boot` partition's size in MiB: installimage's `PART /boot ext4 1024M`, as CAPH's
/// templates have it.
pub const BOOT_MIB: u64 = 1024;

/// The smallest root partition: room for a node image and what first boot writes.
const MIN_ROOT_BYTES: u64 = 7 << 30;

/// A file the caller places in the new system after installimage's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedFile {
    /// Its absolute path in the new system.
    pub path: String,
    /// Its content.
    pub content: String,
    /// Its mode (`0o644`).
    pub mode: u32,
}

/// What to install where.
#[derive(Debug)]
pub struct InstallRequest<'a> {
    /// The tarball.
    pub tarball: &'a Path,
    /// What it holds (see [`TarballContents::read`]).
    pub contents: &'a TarballContents,
    /// The hostname (installimage's `HOSTNAME`).
    pub hostname: &'a str,
    /// The network the machine has.
    pub network: &'a Network,
    /// Whether the machine is a virtual one (installimage's kernel command line differs).
    pub virtual_machine: bool,
    /// Files placed afterwards.
    pub files: &'a [PlacedFile],
    /// A directory for the staged files and the mount point.
    pub work_dir: &'a Path,
}

/// What the install made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The `/boot` file system's UUID.
    pub boot_uuid: String,
    /// The root file system's UUID.
    pub root_uuid: String,
    /// The machine id written.
    pub machine_id: String,
    /// The SSH host keys made (public key lines).
    pub host_keys: Vec<String>,
}

/// The size of the disk for `contents`: `/boot`, and a root file system with room for the tree
/// and then some (sparse, so only what is written takes space).
pub fn disk_bytes(contents: &TarballContents) -> u64 {
    let root = (contents.unpacked_bytes / 2 * 3 + (1 << 30)).max(MIN_ROOT_BYTES);
    // 1 MiB before the first partition, as sfdisk aligns it.
    (1 << 20) + (BOOT_MIB << 20) + root
}

/// What the install and first boot write to the (sparse) disk, about: the tree, a new initramfs
/// and room for first boot.
pub fn space_needed(contents: &TarballContents) -> u64 {
    contents.unpacked_bytes + contents.unpacked_bytes / 5 + (512 << 20)
}

/// A random UUID (version 4), for a file system.
pub fn random_uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// installimage's `/etc/fstab` for the two partitions: proc, then each file system by UUID under
/// a comment naming its device.
pub fn fstab(drive: &str, boot_uuid: &str, root_uuid: &str) -> String {
    format!(
        "proc /proc proc defaults 0 0\n# {drive}1\nUUID={boot_uuid} /boot ext4 defaults 0 0\n# {drive}2\nUUID={root_uuid} / ext4 defaults 0 0\n"
    )
}

/// GNU tar's option for a compression.
fn tar_option(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "--no-auto-compress",
        Compression::Gzip => "--gzip",
        Compression::Zstd => "--zstd",
        Compression::Xz => "--xz",
        Compression::Bzip2 => "--bzip2",
    }
}

fn failed(what: &str) -> impl Fn(std::io::Error) -> BootError + '_ {
    move |error| BootError::Failed {
        what: what.to_string(),
        detail: error.to_string(),
    }
}

/// Runs a program to its end; its error output in the error.
async fn run(what: &str, command: &mut tokio::process::Command) -> Result<(), BootError> {
    let output = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(failed(what))?;
    if output.status.success() {
        return Ok(());
    }
    Err(BootError::Failed {
        what: what.to_string(),
        detail: format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// The script that installs, in its own mount namespace; its arguments are named at the top.
const INSTALL_SCRIPT: &str = r#"root=$1 disk=$2 boot_part=$3 root_part=$4 tarball=$5 tar_option=$6 stage=$7
boot_uuid=$8 root_uuid=$9 cmdline=${10} machine_id=${11} key_types=${12} netplan=${13}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
in_root() { chroot "$root" "$@"; }

mount "$root_part" "$root"
mkdir -p "$root/boot"
mount "$boot_part" "$root/boot"
echo "extracting the tarball (GNU tar, installimage's options)"
tar -x "$tar_option" --anchored --numeric-owner --xattrs --xattrs-include=security.capability \
  --xattrs-include=security.selinux --exclude 'sys' --exclude 'proc' --exclude 'dev' \
  -f "$tarball" -C "$root"
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/run"
chmod 0755 "$root"

echo "writing installimage's files: fstab, hostname, hosts, network, resolvers, sysctls"
while IFS=' ' read -r mode path; do
  [ -n "$path" ] || continue
  if [ -L "$root$path" ]; then rm -f "$root$path"; fi
  install -D -m "$mode" "$stage/files$path" "$root$path"
done < "$stage/installimage-files"
if [ -L "$root/etc/resolv.conf" ]; then
  install -D -m 0644 "$stage/resolv.conf" "$root/etc/resolvconf/resolv.conf.d/base"
else
  install -m 0644 "$stage/resolv.conf" "$root/etc/resolv.conf"
fi
if [ -d "$root/etc/sysctl.d" ]; then
  install -m 0644 "$stage/99-hetzner.conf" "$root/etc/sysctl.d/99-hetzner.conf"
fi
if [ -f "$root/etc/machine-id" ]; then
  printf '%s\n' "$machine_id" > "$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  if [ -d "$root/var/lib/dbus" ]; then cp "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"; fi
fi

# The chroot: /proc, a read-only /sys, a /run of its own, and a /dev with only the disk's nodes
# and the by-uuid links udev would make.
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755 run "$root/run"
mount -t tmpfs -o mode=0755 dev "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
cp -a "$disk" "$boot_part" "$root_part" "$root/dev/"
mkdir -p "$root/dev/disk/by-uuid"
ln -s "../../${boot_part##*/}" "$root/dev/disk/by-uuid/$boot_uuid"
ln -s "../../${root_part##*/}" "$root/dev/disk/by-uuid/$root_uuid"

for spec in $key_types; do
  type=${spec%%:*} rest=${spec#*:}
  file=${rest%%:*} prefix=${rest#*:}
  echo "generating a new $type host key"
  rm -f "$root/etc/ssh/$prefix"*
  if [ "$type" = rsa1 ]; then
    in_root ssh-keygen -t rsa1 -b 1024 -f "/etc/ssh/$file" -N '' -q
  else
    in_root ssh-keygen -t "$type" -f "/etc/ssh/$file" -N '' -q
  fi
done
if [ "$netplan" = yes ]; then
  echo "netplan generate"
  in_root netplan generate
fi

echo "update-initramfs -u -k all"
in_root update-initramfs -u -k all
echo "GRUB: installimage's kernel command line, grub-mkconfig, grub-install into the MBR"
if [ -f "$root/etc/default/grub" ]; then
  sed -i -e 's/^GRUB_HIDDEN_TIMEOUT=.*/GRUB_HIDDEN_TIMEOUT=5/' \
    -e 's/^GRUB_HIDDEN_TIMEOUT_QUIET=.*/GRUB_HIDDEN_TIMEOUT_QUIET=false/' \
    -e "s/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=\"$cmdline\"/" \
    "$root/etc/default/grub"
fi
rm -f "$root/boot/grub/grub.cfg"
in_root grub-mkconfig -o /boot/grub/grub.cfg
in_root grub-install --no-floppy --recheck "/dev/${disk##*/}"

echo "placing the caller's files"
while IFS=' ' read -r mode path; do
  [ -n "$path" ] || continue
  if [ -L "$root$path" ]; then rm -f "$root$path"; fi
  install -D -m "$mode" "$stage/placed$path" "$root$path"
done < "$stage/placed-files"

echo "::host-keys::"
for key in "$root"/etc/ssh/ssh_host_*_key.pub; do
  if [ -f "$key" ]; then cat "$key"; fi
done
sync
"#;

/// Writes `files` below `dir` and lists them (`mode path` lines) in `list`.
pub(crate) fn stage(dir: &Path, list: &Path, files: &[PlacedFile]) -> Result<(), BootError> {
    let mut listing = String::new();
    for file in files {
        let relative = file.path.trim_start_matches('/');
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(failed("staging the files to place"))?;
        }
        std::fs::write(&target, &file.content).map_err(failed("staging the files to place"))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))
            .map_err(failed("staging the files to place"))?;
        let _ = writeln!(listing, "{:o} /{relative}", file.mode);
    }
    std::fs::write(list, listing).map_err(failed("staging the files to place"))
}

/// Installs `request.tarball` onto the disk attached to `disk` (partitioned and formatted
/// here); each line of the install's output goes to `on_line`.
pub async fn install(
    request: &InstallRequest<'_>,
    disk: &LoopDevice,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<Installed, BootError> {
    let device = disk.info().device.clone();
    on_line(&format!(
        "partitioning {} (msdos: /boot ext4 {BOOT_MIB}M, / ext4 the rest)",
        device.display()
    ));
    let mut sfdisk = tokio::process::Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&device)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(failed("running sfdisk (util-linux)"))?;
    if let Some(mut stdin) = sfdisk.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin
            .write_all(format!("label: dos\nsize={BOOT_MIB}MiB, type=83\ntype=83\n").as_bytes())
            .await
            .map_err(failed("writing sfdisk's script"))?;
    }
    let output = sfdisk
        .wait_with_output()
        .await
        .map_err(failed("running sfdisk"))?;
    if !output.status.success() {
        return Err(BootError::Failed {
            what: "partitioning the disk".to_string(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    disk.add_partitions().await?;
    let boot_part = disk.info().partition(1);
    let root_part = disk.info().partition(2);
    let boot_uuid = random_uuid();
    let root_uuid = random_uuid();
    for (part, uuid, what) in [
        (&boot_part, &boot_uuid, "/boot"),
        (&root_part, &root_uuid, "/"),
    ] {
        on_line(&format!("formatting {} ({what}) with ext4", part.display()));
        run(
            &format!("formatting {what} with ext4"),
            tokio::process::Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-U", uuid])
                .arg(part),
        )
        .await?;
    }

    let stage_dir = request.work_dir.join("stage");
    let mount_point = request.work_dir.join("root");
    std::fs::create_dir_all(&mount_point).map_err(failed("creating the mount point"))?;
    let distro = request.contents.os_release("ID").unwrap_or_default();
    let (network_path, network_text) = installimage::network_config(&distro, request.network);
    // installimage writes netplan 0600 (it holds no secret, but netplan warns otherwise).
    let network_mode = if network_path.contains("netplan") {
        0o600
    } else {
        0o644
    };
    let installimage_files = [
        PlacedFile {
            path: "/etc/fstab".into(),
            content: fstab("/dev/vda", &boot_uuid, &root_uuid),
            mode: 0o644,
        },
        PlacedFile {
            path: "/etc/hostname".into(),
            content: format!("{}\n", request.hostname),
            mode: 0o644,
        },
        PlacedFile {
            path: "/etc/hosts".into(),
            content: installimage::hosts(request.hostname, request.network),
            mode: 0o644,
        },
        PlacedFile {
            path: format!("/{network_path}"),
            content: network_text,
            mode: network_mode,
        },
    ];
    stage(
        &stage_dir.join("files"),
        &stage_dir.join("installimage-files"),
        &installimage_files,
    )?;
    stage(
        &stage_dir.join("placed"),
        &stage_dir.join("placed-files"),
        request.files,
    )?;
    std::fs::write(stage_dir.join("resolv.conf"), installimage::resolv_conf())
        .map_err(failed("staging resolv.conf"))?;
    std::fs::write(stage_dir.join("99-hetzner.conf"), installimage::SYSCTL)
        .map_err(failed("staging the sysctls"))?;

    let machine_id = hex::encode(rand::random::<[u8; 16]>());
    let key_types: Vec<String> = installimage::HOST_KEY_TYPES
        .iter()
        .filter(|(_, file, _)| request.contents.host_key_files.contains_key(*file))
        .map(|(kind, file, prefix)| format!("{kind}:{file}:{prefix}"))
        .collect();
    let arguments: Vec<OsString> = vec![
        mount_point.clone().into(),
        device.clone().into(),
        boot_part.clone().into(),
        root_part.clone().into(),
        request.tarball.into(),
        tar_option(request.contents.compression).into(),
        stage_dir.clone().into(),
        boot_uuid.clone().into(),
        root_uuid.clone().into(),
        installimage::grub_cmdline_default(request.virtual_machine).into(),
        machine_id.clone().into(),
        key_types.join(" ").into(),
        if request.contents.has_netplan() {
            "yes"
        } else {
            "no"
        }
        .into(),
    ];
    let mut host_keys = Vec::new();
    let mut in_keys = false;
    crate::namespace::run_private(
        "installing the tarball on the disk",
        INSTALL_SCRIPT,
        &arguments,
        &mut |line: &str| {
            if line == "::host-keys::" {
                in_keys = true;
            } else if in_keys {
                host_keys.push(line.to_string());
            } else {
                on_line(line);
            }
        },
    )
    .await?;
    let _ = std::fs::remove_dir_all(&stage_dir);
    Ok(Installed {
        boot_uuid,
        root_uuid,
        machine_id,
        host_keys,
    })
}

/// The root file system's partition of a disk [`install`] made, for reading it back.
pub fn root_partition(disk: &LoopDevice) -> PathBuf {
    disk.info().partition(2)
}
