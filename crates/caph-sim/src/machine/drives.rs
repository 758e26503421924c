//! Block devices for simulated machines: sparse disk images on loop devices, shown inside a machine under the server's own drive names, and nothing of the host's.
//!
//! A machine with drives (see [`SshMachines::set_drives`](super::SshMachines::set_drives)) gets,
//! at every boot:
//!
//! - each drive image attached to a loop device with partition scanning (`losetup --find --show
//!   --partscan`), non-rotational, and detached again at power off (its partitions removed
//!   first with `delpart`, or they would linger in `/sys/block/loopN`);
//! - in its private `/dev`, a block node per drive under the drive's name (`/dev/nvme0n1`), and
//!   never a node of a host device;
//! - a `/sys/block` and `/sys/class/block` of its own that list only those drives, under their
//!   names, so that `lsblk`, installimage's drive detection and `find /sys/block` see the
//!   server's drives and not the host's;
//! - udev's database entries for them (`/run/udev/data/b<major>:<minor>` with `ID_WWN`,
//!   `ID_MODEL`, `ID_SERIAL_SHORT`), which `lsblk -o WWN,MODEL,SERIAL` reads;
//! - a udev stand-in: no udev daemon runs in a machine (it would act on the host's devices), so a
//!   loop in the machine's boot makes the partition nodes (`/dev/nvme0n1p1`, `/dev/sda1`) and
//!   the `/dev/disk/by-uuid` links as partitions and filesystems come and go, as udev would.
//!
//! The machine's root filesystem is an overlay mount (see the `layers` module), so it is a mount
//! point of its own, which `systemd-nspawn` (run by installimage) requires, and its source is
//! no device: installimage's `unmount_all` unmounts every mounted `/dev/...` before it
//! partitions, and would try the root too.
//!
//! The kernel these simulations run on answers `BLKRRPART` (the partition table re-read that
//! `sfdisk` and `blockdev --rereadpt` ask for) on a loop device without adding its partitions;
//! `BLKPG` calls (`parted`, `partprobe`, `partx`, what installimage uses) take effect at once.

use std::path::{Path, PathBuf};

use crate::host::MachineError;

/// A drive of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDrive {
    /// The name inside the machine, without `/dev/` (`nvme0n1`, `sda`).
    pub name: String,
    /// The sparse image file that holds the drive's bytes; it must exist.
    pub image: PathBuf,
    /// udev's `ID_WWN` (`0x5002538e40a1b2c3`), shown by `lsblk -o WWN`.
    pub wwn: Option<String>,
    /// udev's `ID_MODEL`.
    pub model: Option<String>,
    /// udev's `ID_SERIAL_SHORT`.
    pub serial: Option<String>,
}

/// A drive attached to a loop device for one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachedDrive {
    pub drive: MachineDrive,
    /// `/dev/loopN` on the host.
    pub loop_device: PathBuf,
    /// `loopN`.
    pub kernel_name: String,
    pub major: u32,
    pub minor: u32,
    /// The drive's image as the kernel names it while attached.
    pub backing: PathBuf,
}

fn error(message: String) -> MachineError {
    MachineError(message)
}

/// Attaches every drive, or none: a failure detaches what was attached.
pub(crate) async fn attach_all(
    drives: &[MachineDrive],
) -> Result<Vec<AttachedDrive>, MachineError> {
    let mut attached = Vec::new();
    for drive in drives {
        match attach(drive).await {
            Ok(one) => attached.push(one),
            Err(failure) => {
                detach_all(&attached).await;
                return Err(failure);
            }
        }
    }
    Ok(attached)
}

async fn attach(drive: &MachineDrive) -> Result<AttachedDrive, MachineError> {
    let info = caph_boot::loop_device::attach(&drive.image)
        .await
        .map_err(error)?;
    let attached = AttachedDrive {
        drive: drive.clone(),
        loop_device: info.device.clone(),
        kernel_name: info.kernel_name.clone(),
        major: info.major,
        minor: info.minor,
        backing: info.backing.clone(),
    };
    // Server drives are SSDs; a loop device says rotational by default. Our own device, so
    // changing its queue setting touches nothing of the host's.
    let _ = std::fs::write(
        format!("/sys/block/{}/queue/rotational", attached.kernel_name),
        "0",
    );
    Ok(attached)
}

/// Detaches drives; best effort, as it runs on every power off and on cleanup paths.
pub(crate) async fn detach_all(drives: &[AttachedDrive]) {
    for drive in drives {
        detach(drive).await;
    }
}

async fn detach(drive: &AttachedDrive) {
    // Only while the device still holds this drive's file: a second detach of a reused
    // `loopN` would take someone else's disk away.
    caph_boot::loop_device::detach(&caph_boot::loop_device::LoopInfo {
        device: drive.loop_device.clone(),
        kernel_name: drive.kernel_name.clone(),
        major: drive.major,
        minor: drive.minor,
        backing: drive.backing.clone(),
    })
    .await;
}

/// Detaches loop devices whose backing file lies below `dir` (the drives of machines whose
/// process was killed). Runs at start-up, before anything below `dir` is removed.
pub(crate) fn sweep_loops_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in entries.flatten() {
        let kernel_name = entry.file_name().to_string_lossy().into_owned();
        if !kernel_name.starts_with("loop") {
            continue;
        }
        let Some(backing) = caph_boot::loop_device::backing_file(&kernel_name) else {
            continue;
        };
        if backing.starts_with(dir) {
            // A synchronous context (start-up): a small runtime of its own is not worth it for
            // two commands, so run them directly.
            caph_boot::loop_device::detach_blocking(
                &PathBuf::from("/dev").join(&kernel_name),
                &kernel_name,
            );
        }
    }
}

/// The boot script's view of the drives: one `name:kernel-name:major:minor` word per drive, in
/// `CAPH_SIM_DRIVES`.
pub(crate) fn boot_words(drives: &[AttachedDrive]) -> String {
    drives
        .iter()
        .map(|drive| {
            format!(
                "{}:{}:{}:{}",
                drive.drive.name, drive.kernel_name, drive.major, drive.minor
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// udev's database entry for a drive (the properties `lsblk` shows), or `None` without any.
pub(crate) fn udev_data(drive: &MachineDrive) -> Option<String> {
    let mut text = String::new();
    for (key, value) in [
        ("ID_WWN", &drive.wwn),
        ("ID_MODEL", &drive.model),
        ("ID_SERIAL_SHORT", &drive.serial),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("E:{key}={value}\n"));
        }
    }
    (!text.is_empty()).then_some(text)
}

/// The part of a machine's boot that sets up its drives, sourced by the boot script when
/// `CAPH_SIM_DRIVES` is set (after `/sys`, `/dev` and `/run` are mounted in the machine's root,
/// `$root`). The udev data files, when any, are in `$CAPH_SIM_UDEV_DATA` on the host.
pub(crate) const BOOT_FRAGMENT: &str = r#"
# nspawn (run by installimage) needs cgroup2 where systemd expects it.
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup" 2>/dev/null || true
# The server's drives, and only they, in /sys/block and /sys/class/block, under their own names.
mount -t tmpfs -o mode=0755,size=64k caph-sim-block "$root/sys/block"
mount -t tmpfs -o mode=0755,size=64k caph-sim-class-block "$root/sys/class/block"
mkdir -p "$root/dev/disk/by-uuid" "$root/dev/disk/by-id" "$root/run/udev/data"
for drive in $CAPH_SIM_DRIVES; do
  saved_ifs=$IFS; IFS=:; set -- $drive; IFS=$saved_ifs
  ln -s "../devices/virtual/block/$2" "$root/sys/block/$1"
  ln -s "../../devices/virtual/block/$2" "$root/sys/class/block/$1"
  mknod -m 0660 "$root/dev/$1" b "$3" "$4"
  if [ -n "${CAPH_SIM_UDEV_DATA:-}" ] && [ -f "$CAPH_SIM_UDEV_DATA/$1" ]; then
    cp "$CAPH_SIM_UDEV_DATA/$1" "$root/run/udev/data/b$3:$4"
  fi
done
# The udev stand-in: partition nodes under the drive's name (a p before the number where the
# name ends in a digit, as the kernel names them) and by-uuid links, made and removed as they
# come and go; every pass bumps /run/caph-sim-udev so that a waiter can tell a pass happened.
caph_sim_udev_pass() {
  uuids=" "
  for drive in $CAPH_SIM_DRIVES; do
    saved_ifs=$IFS; IFS=:; set -- $drive; IFS=$saved_ifs
    name=$1 kernel=$2
    case $name in *[0-9]) separator=p ;; *) separator= ;; esac
    present=" "
    for part in /sys/block/$kernel/${kernel}p*; do
      [ -r "$part/dev" ] || continue
      number=${part##*p}
      node="$root/dev/$name$separator$number"
      numbers=$(cat "$part/dev")
      if [ "$(stat -c '%Hr:%Lr' "$node" 2>/dev/null)" != "$numbers" ]; then
        rm -f "$node"
        mknod -m 0660 "$node" b "${numbers%:*}" "${numbers#*:}"
      fi
      present="$present$name$separator$number "
      uuid=$(blkid -p -o value -s UUID "$node" 2>/dev/null) || uuid=
      if [ -n "$uuid" ]; then
        uuids="$uuids$uuid "
        [ "$(readlink "$root/dev/disk/by-uuid/$uuid")" = "../../$name$separator$number" ] ||
          ln -sfn "../../$name$separator$number" "$root/dev/disk/by-uuid/$uuid"
      fi
    done
    for node in "$root/dev/$name$separator"[0-9]*; do
      [ -e "$node" ] || continue
      case "$present" in *" ${node##*/} "*) ;; *) rm -f "$node" ;; esac
    done
  done
  for link in "$root/dev/disk/by-uuid/"*; do
    [ -L "$link" ] || continue
    case "$uuids" in *" ${link##*/} "*) ;; *) rm -f "$link" ;; esac
  done
  pass=$(( $(cat "$root/run/caph-sim-udev" 2>/dev/null || echo 0) + 1 ))
  echo "$pass" > "$root/run/caph-sim-udev"
}
( set +e; while :; do caph_sim_udev_pass; sleep 0.2; done ) </dev/null >/dev/null 2>&1 &
"#;
