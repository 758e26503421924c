//! Disk image files on loop devices: attached with `losetup`, their partitions added with
//! `partx` (this kernel ignores a partition table re-read on a loop device, `BLKRRPART`, but
//! takes `BLKPG`), and detached again with the partitions removed first (`delpart`), or they
//! would linger in `/sys/block/loopN`.
//!
//! [`LoopDevice`] detaches when dropped, also when the future holding it is dropped at
//! cancellation. A loop device is the host's, not a namespace's: whatever mounted its partitions
//! must be gone first, and [`LoopDevice`]'s drop waits a little for that (a mount namespace whose
//! last process was just killed goes away a moment later).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::BootError;

/// A loop device the host knows: `/dev/loopN` and its device numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// `loopN`.
    pub kernel_name: String,
    /// Its block device major number.
    pub major: u32,
    /// Its block device minor number.
    pub minor: u32,
    /// The file attached, as the kernel names it (absolute, symlinks resolved).
    pub backing: PathBuf,
}

impl LoopInfo {
    /// Whether the device still holds [`LoopInfo::backing`]: once detached, the kernel may give
    /// `loopN` to someone else's file, which a second detach must not touch.
    pub fn still_backs(&self) -> bool {
        backing_file(&self.kernel_name).is_some_and(|file| same_file(&file, &self.backing))
    }

    /// The device of partition `number`: `/dev/loopNpM`.
    pub fn partition(&self, number: u32) -> PathBuf {
        PathBuf::from(format!("{}p{number}", self.device.display()))
    }
}

/// Attaches `image` to a free loop device.
pub async fn attach(image: &Path) -> Result<LoopInfo, String> {
    let output = tokio::process::Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|failure| format!("running losetup: {failure}"))?;
    if !output.status.success() {
        return Err(format!(
            "attaching {} to a loop device: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let device = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let kernel_name = device
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let numbers = std::fs::read_to_string(format!("/sys/block/{kernel_name}/dev"))
        .ok()
        .and_then(|text| {
            let (major, minor) = text.trim().split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        });
    let info = LoopInfo {
        device,
        kernel_name: kernel_name.clone(),
        major: numbers.map_or(0, |(major, _)| major),
        minor: numbers.map_or(0, |(_, minor)| minor),
        backing: std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf()),
    };
    if numbers.is_none() {
        detach(&info).await;
        return Err(format!(
            "{}: no device numbers in /sys/block/{kernel_name}/dev",
            info.device.display()
        ));
    }
    Ok(info)
}

/// Removes a loop device's partitions, then the device, if it still holds its file; best effort.
/// A device still held open (a mount in a namespace that is going away) is marked to detach
/// itself when the last user closes it.
pub async fn detach(info: &LoopInfo) {
    if !info.still_backs() {
        return;
    }
    for number in partition_numbers(&info.kernel_name) {
        let _ = tokio::process::Command::new("delpart")
            .arg(&info.device)
            .arg(number.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = tokio::process::Command::new("losetup")
        .arg("--detach")
        .arg(&info.device)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// [`detach`] for a synchronous context (a drop, start-up): the same commands, run directly,
/// whatever the device holds (the caller checked).
pub fn detach_blocking(device: &Path, kernel_name: &str) {
    for number in partition_numbers(kernel_name) {
        let _ = std::process::Command::new("delpart")
            .arg(device)
            .arg(number.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::process::Command::new("losetup")
        .arg("--detach")
        .arg(device)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The partition numbers the kernel lists for a block device (`loop3p1` → 1).
pub fn partition_numbers(kernel_name: &str) -> Vec<u32> {
    let prefix = format!("{kernel_name}p");
    let mut numbers: Vec<u32> = std::fs::read_dir(format!("/sys/block/{kernel_name}"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .strip_prefix(&prefix)
                        .and_then(|number| number.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    numbers
}

/// The file behind a loop device, while it is attached.
pub fn backing_file(kernel_name: &str) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/sys/block/{kernel_name}/loop/backing_file"))
        .ok()
        .map(|text| PathBuf::from(text.trim()))
}

/// How long a drop waits for a loop device to be free: the mounts of a killed namespace go
/// within a second; ten leave room for a loaded machine.
const DETACH_PATIENCE: Duration = Duration::from_secs(10);

/// A disk image attached to a loop device for as long as this value lives.
#[derive(Debug)]
pub struct LoopDevice {
    info: LoopInfo,
    attached: bool,
}

impl LoopDevice {
    /// Attaches `image` (which must exist) to a free loop device.
    pub async fn attach(image: &Path) -> Result<LoopDevice, BootError> {
        let info = attach(image).await.map_err(|detail| BootError::Failed {
            what: "attaching the disk image".to_string(),
            detail,
        })?;
        Ok(LoopDevice {
            info,
            attached: true,
        })
    }

    /// The device and its numbers.
    pub fn info(&self) -> &LoopInfo {
        &self.info
    }

    /// Tells the kernel about the partitions of the table just written (`partx --add`, which
    /// uses `BLKPG`): `/dev/loopNp1`, ... appear.
    pub async fn add_partitions(&self) -> Result<(), BootError> {
        let output = tokio::process::Command::new("partx")
            .arg("--add")
            .arg(&self.info.device)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| BootError::Failed {
                what: "running partx".to_string(),
                detail: error.to_string(),
            })?;
        // partx fails for partitions the kernel already has (--partscan found them): only
        // their absence is an error.
        if partition_numbers(&self.info.kernel_name).is_empty() {
            return Err(BootError::Failed {
                what: format!("adding the partitions of {}", self.info.device.display()),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Detaches now, waiting until the device is free (see [`LoopDevice`]'s drop); whether it was
    /// (else it detaches itself once its last user goes).
    pub fn detach(mut self) -> bool {
        self.detach_now()
    }

    fn detach_now(&mut self) -> bool {
        if !self.attached {
            return true;
        }
        self.attached = false;
        let started = Instant::now();
        loop {
            if !self.info.still_backs() {
                return true;
            }
            detach_blocking(&self.info.device, &self.info.kernel_name);
            if !self.info.still_backs() {
                return true;
            }
            if started.elapsed() > DETACH_PATIENCE {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether the backing file a loop device names is `image` (the kernel names it by its absolute
/// path, with " (deleted)" once removed).
fn same_file(backing: &Path, image: &Path) -> bool {
    let backing = backing.to_string_lossy();
    let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
    Path::new(backing) == image
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Nothing can be reported from here; a device still busy after the wait has been marked
        // to detach itself (losetup sets autoclear) when its last user goes.
        let _ = self.detach_now();
    }
}
