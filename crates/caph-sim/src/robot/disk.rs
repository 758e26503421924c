//! What the real installimage left on a server's drives, read back from the image file: the partitions, their filesystems, and the installed system's fstab and hostname, as the [`Manifest`] the simulated installimage writes for itself.
//!
//! The disk boot ([`SshRobotMachines`](super::SshRobotMachines)) needs to know which partition
//! holds `/` and which are mounted where; the real installimage records none of that outside the
//! disk, so it is read from the disk the way a booting system finds it: the partition table
//! (`sfdisk --json`), each filesystem's type and UUID (`blkid --probe`), and `/etc/fstab` of the
//! partition that has one.

use std::path::Path;
use std::process::Stdio;

use crate::host::MachineError;
use crate::installimage::{InstalledDisk, InstalledPartition, Manifest};

use super::RobotMachineSpec;
use super::ssh::drive_image_name;

/// Bytes per sector in the partition tables installimage writes.
const SECTOR_BYTES: u64 = 512;

fn error(message: String) -> MachineError {
    MachineError(message)
}

async fn output(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, MachineError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|failure| error(format!("running {program}: {failure}")))?;
    if !output.status.success() {
        return Err(error(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One partition of the table, before its filesystem is known.
struct TablePartition {
    number: usize,
    start_bytes: u64,
    size_bytes: u64,
}

/// The installed system the server boots: that of the first drive, in the drives' order, that
/// holds one, as a BIOS tries its boot drives in turn (installimage may have used any of them,
/// for example the one a root-device hint picked); `None` when no drive holds a partition with
/// an `/etc/fstab` (all empty, or an install that failed early).
pub(crate) async fn installed_system(
    disk_dir: &Path,
    spec: &RobotMachineSpec,
) -> Result<Option<Manifest>, MachineError> {
    for drive in &spec.drives {
        let image = disk_dir.join(drive_image_name(&drive.device));
        if !image.exists() {
            continue;
        }
        if let Some(manifest) = read_installed_system(&image, &drive.device).await? {
            return Ok(Some(manifest));
        }
    }
    Ok(None)
}

/// The installed system on a drive image, whose device in the rescue system was `device`
/// (`/dev/sda`, for the partitions' names), or `None` when no partition holds an
/// `/etc/fstab`. The root is the ext partition with the fstab; the fstab names the others.
pub async fn read_installed_system(
    image: &Path,
    device: &str,
) -> Result<Option<Manifest>, MachineError> {
    let image = image.to_path_buf();
    // A drive without a partition table makes sfdisk fail: nothing installed.
    let Ok(table) = output("sfdisk", &["--json".as_ref(), image.as_os_str()]).await else {
        return Ok(None);
    };
    let table: serde_json::Value = serde_json::from_str(&table)
        .map_err(|failure| error(format!("sfdisk --json {}: {failure}", image.display())))?;
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(SECTOR_BYTES);
    let partitions: Vec<TablePartition> = table["partitiontable"]["partitions"]
        .as_array()
        .map(|list| {
            list.iter()
                .enumerate()
                .map(|(index, partition)| TablePartition {
                    number: index + 1,
                    start_bytes: partition["start"].as_u64().unwrap_or(0) * sector,
                    size_bytes: partition["size"].as_u64().unwrap_or(0) * sector,
                })
                .collect()
        })
        .unwrap_or_default();
    let separator = if device.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    let mut found = Vec::new();
    for partition in &partitions {
        let probe = output(
            "blkid",
            &[
                "--probe".as_ref(),
                "--output".as_ref(),
                "export".as_ref(),
                "--offset".as_ref(),
                partition.start_bytes.to_string().as_ref(),
                "--size".as_ref(),
                partition.size_bytes.to_string().as_ref(),
                image.as_os_str(),
            ],
        )
        .await
        .unwrap_or_default();
        let field = |key: &str| {
            probe
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .unwrap_or("")
                .to_owned()
        };
        found.push(InstalledPartition {
            device: format!("{device}{separator}{}", partition.number),
            image: image.clone(),
            start_bytes: partition.start_bytes,
            size_bytes: partition.size_bytes,
            fs: field("TYPE"),
            mount: String::from("none"),
            uuid: field("UUID"),
            formatted: !field("TYPE").is_empty(),
        });
    }
    // The root filesystem is the ext one that holds /etc/fstab; it names the other mounts.
    for index in 0..found.len() {
        if !found[index].fs.starts_with("ext") {
            continue;
        }
        let Some((fstab, hostname, image_name)) = read_system_files(&found[index]).await? else {
            continue;
        };
        for line in fstab.lines() {
            let mut fields = line.split_whitespace();
            let (Some(source), Some(mount)) = (fields.next(), fields.next()) else {
                continue;
            };
            if source.starts_with('#') {
                continue;
            }
            if let Some(partition) = found.iter_mut().find(|partition| {
                source == format!("UUID={}", partition.uuid) || source == partition.device
            }) {
                partition.mount = mount.to_owned();
            }
        }
        if !found.iter().any(|partition| partition.mount == "/") {
            found[index].mount = "/".into();
        }
        return Ok(Some(Manifest {
            hostname,
            image: image_name,
            disk: InstalledDisk::Images { partitions: found },
            // The real installimage cannot encrypt here: this kernel has no device-mapper.
            encrypted: Vec::new(),
        }));
    }
    Ok(None)
}

/// `/etc/fstab`, the hostname and the image name (from the `/installimage.conf` installimage
/// leaves) of a partition, when it has an fstab; read through a read-only loop mount.
async fn read_system_files(
    partition: &InstalledPartition,
) -> Result<Option<(String, String, String)>, MachineError> {
    let point = tempfile_dir()?;
    let options = format!(
        "ro,loop,offset={},sizelimit={}",
        partition.start_bytes, partition.size_bytes
    );
    if output(
        "mount",
        &[
            "-o".as_ref(),
            options.as_ref(),
            partition.image.as_os_str(),
            point.as_os_str(),
        ],
    )
    .await
    .is_err()
    {
        let _ = std::fs::remove_dir(&point);
        return Ok(None);
    }
    let fstab = std::fs::read_to_string(point.join("etc/fstab")).ok();
    let hostname = std::fs::read_to_string(point.join("etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let image_name = std::fs::read_to_string(point.join("installimage.conf"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("IMAGE "))
        .map(|value| value.trim().rsplit('/').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let _ = output("umount", &[point.as_os_str()]).await;
    let _ = std::fs::remove_dir(&point);
    Ok(fstab.map(|fstab| (fstab, hostname, image_name)))
}

/// An empty directory to mount on, in the system's temporary directory.
fn tempfile_dir() -> Result<std::path::PathBuf, MachineError> {
    let path = std::env::temp_dir().join(format!("caph-sim-disk-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&path)
        .map_err(|failure| error(format!("creating {}: {failure}", path.display())))?;
    Ok(path)
}
