//! Small operating-system helpers: process liveness, mount discovery, and tree removal that never
//! crosses into a mounted filesystem.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether this process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The kernel's start time of `pid` (field 22 of `/proc/<pid>/stat`), which together with the pid
/// identifies a process even after its pid is reused.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; starttime is field 22, i.e. index 19 here.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// `pid starttime` for this process, written into directories it owns.
pub(crate) fn owner_stamp() -> String {
    let pid = std::process::id();
    format!("{pid} {}\n", process_start_time(pid).unwrap_or(0))
}

/// Whether the process described by an [`owner_stamp`] still runs.
pub(crate) fn owner_alive(stamp: &str) -> bool {
    let mut fields = stamp.split_whitespace();
    let (Some(pid), Some(start)) = (fields.next(), fields.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Sends SIGKILL to `pid` if it is still the process its stamp describes and its command line
/// mentions `marker` (so a reused pid is never hit).
pub(crate) fn kill_if_ours(stamp: &str, marker: &str) {
    if !owner_alive(stamp) {
        return;
    }
    let Some(pid) = stamp
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(marker) {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Mount points at or below `root` in this process's mount namespace, deepest first.
pub(crate) fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount_point| mount_point.starts_with(root))
        .collect();
    found.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && let Some(octal) = field.get(index + 1..index + 4)
            && let Ok(value) = u8::from_str_radix(octal, 8)
        {
            out.push(value);
            index += 4;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `path` and everything below it: first detaches any filesystem mounted there (a killed
/// build can leave some), then deletes with `rm --one-file-system`, so that even a mount that
/// could not be detached (a bind of `/dev`, say) is never recursed into.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    for mount_point in mounts_under(path) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&mount_point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let output = Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg("--")
        .arg(path)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "rm -rf {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Checks sshd's rule for `ChrootDirectory`: every component of the path must be owned by root and
/// not writable by group or others. Returns the first offending component.
pub(crate) fn chroot_path_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut current = Some(path);
    while let Some(component) = current {
        if let Ok(metadata) = fs::metadata(component) {
            if metadata.uid() != 0 {
                return Some(format!(
                    "{} is owned by uid {}, not root",
                    component.display(),
                    metadata.uid()
                ));
            }
            if metadata.mode() & 0o022 != 0 {
                return Some(format!(
                    "{} is group- or world-writable (mode {:o})",
                    component.display(),
                    metadata.mode() & 0o7777
                ));
            }
        }
        current = component.parent();
    }
    None
}

/// Bytes used by the regular files below `root`, each inode counted once (hard links share data).
pub(crate) fn tree_bytes(root: &Path) -> io::Result<u64> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    let root_device = fs::symlink_metadata(root)?.dev();
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.dev() != root_device {
                continue;
            }
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() && seen.insert(metadata.ino()) {
                total += metadata.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_forged_stamp_is_not() {
        let stamp = owner_stamp();
        assert!(owner_alive(&stamp), "{stamp}");
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{pid} 1")));
        assert!(!owner_alive("garbage"));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/var/lib/a\\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_is_a_mount_point() {
        assert_eq!(
            mounts_under(Path::new("/proc"))
                .last()
                .map(PathBuf::as_path),
            Some(Path::new("/proc"))
        );
    }
}
