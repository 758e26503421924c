//! installimage's `validate_vars`: every check, in its order, with its wording.
//!
//! Each check that `return`s in the shell ends validation here too, so a config with two
//! problems reports the first, as installimage does. The one exception is kept as well: a duplicate
//! drive is reported and validation goes on (the shell calls `graph_error` without `return`).

use super::MachineFacts;
use super::config::{Vars, numeric};

/// What installimage's `whoami` derives from the image file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `debian`, `ubuntu`, `suse`, `centos`, `archlinux`, `rockylinux`, `almalinux` or `rhel`.
    pub distro: String,
    /// The second `-`-separated field of the file name (`2404`), `0` when there is none.
    pub version: String,
    /// `32`, `64`, `i386`, `amd64`, `arm64`, `unknown`, or (a quirk kept) the whole name when it
    /// holds no `-` at all.
    pub arch: String,
}

/// `whoami "$IMAGE_FILE"`: distribution by the first of `suse, centos, ubuntu, arch, rocky, alma,
/// rhel` found in the lower-cased name (so `research` reads as Arch Linux), version and arch.
pub fn image_info(file_name: &str) -> ImageInfo {
    let lower = file_name.to_lowercase();
    let distro = [
        ("suse", "suse"),
        ("centos", "centos"),
        ("ubuntu", "ubuntu"),
        ("arch", "archlinux"),
        ("rocky", "rockylinux"),
        ("alma", "almalinux"),
        ("rhel", "rhel"),
    ]
    .into_iter()
    .find(|(needle, _)| lower.contains(needle))
    .map(|(_, name)| name)
    .unwrap_or("debian")
    .to_owned();
    let mut version = file_name.split('-').nth(1).unwrap_or_default().to_owned();
    if file_name.split('-').count() < 2 {
        // `cut -d - -f 2` prints the whole line when there is no delimiter.
        version = file_name.to_owned();
    }
    if version.is_empty() || version == "h.net.tar.gz" || version == "latest" {
        version = "0".into();
    }
    // `sed 's/.*-\(32\|64\|i386\|amd64\|arm64\)-.*/\1/'`: the greedy `.*` picks the last match.
    let mut arch = file_name.to_owned();
    let bytes = file_name.as_bytes();
    'search: for start in (0..bytes.len()).rev() {
        if bytes[start] != b'-' {
            continue;
        }
        for candidate in ["32", "64", "i386", "amd64", "arm64"] {
            let end = start + 1 + candidate.len();
            if file_name.get(start + 1..end) == Some(candidate) && bytes.get(end) == Some(&b'-') {
                arch = candidate.to_owned();
                break 'search;
            }
        }
    }
    if arch.contains('-') {
        arch = "unknown".into();
    }
    ImageInfo {
        distro,
        version,
        arch,
    }
}

/// `img_arch_matches_sysarch`.
fn arch_matches(image_arch: &str, machine_arch: &str) -> bool {
    image_arch == machine_arch
        || (machine_arch == "x86_64" && matches!(image_arch, "32" | "64" | "i386" | "amd64"))
        || (machine_arch == "aarch64" && image_arch == "arm64")
}

/// The image's path type and file type as `read_vars` sets them.
pub(crate) fn image_types(image: &str) -> (String, String, String) {
    let (dir, file) = match image.rsplit_once('/') {
        Some((dir, file)) => (if dir.is_empty() { "/" } else { dir }, file),
        None => (".", image),
    };
    let path = format!("{}/", dir.trim_end_matches('/'));
    let path = if path == "/" || path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    let path_type = if ["https:", "http:", "ftp:"]
        .iter()
        .any(|scheme| path.starts_with(scheme))
    {
        "http"
    } else if path.starts_with('/') {
        "local"
    } else {
        "nfs"
    };
    let file_type = if file.ends_with(".tar") {
        "tar"
    } else if file.ends_with(".tar.gz") || file.ends_with(".tgz") {
        "tgz"
    } else if [".tar.bz", ".tbz", ".tbz2", ".tar.bz2"]
        .iter()
        .any(|suffix| file.ends_with(suffix))
    {
        "tbz"
    } else if file.ends_with(".tar.xz") || file.ends_with(".txz") {
        "txz"
    } else if file.ends_with(".tar.zst") {
        "zst"
    } else {
        ""
    };
    (path_type.into(), file.to_owned(), file_type.into())
}

/// `grep -P '^(/\w*|none$|swap$|lvm$|btrfs\.\w+)'` on a PART mount point.
fn valid_part_mount(mount: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    mount.starts_with('/')
        || matches!(mount, "none" | "swap" | "lvm")
        || mount
            .strip_prefix("btrfs.")
            .and_then(|rest| rest.chars().next())
            .is_some_and(word)
}

pub(crate) fn validate_vars(vars: &Vars, facts: &MachineFacts) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(error) = checks(vars, facts, &mut errors) {
        errors.push(error);
    }
    errors
}

fn drive_is_block_device(facts: &MachineFacts, drive: &str) -> bool {
    facts.drives.iter().any(|known| known.device == drive)
}

fn drive_size_mib(facts: &MachineFacts, drive: &str) -> u64 {
    facts
        .drives
        .iter()
        .find(|known| known.device == drive)
        .map(|known| known.size_bytes)
        .unwrap_or(0)
}

/// The checks in the shell's order; `Err` is the message of a check that ends validation.
/// Messages pushed to `errors` cancel too but let validation go on.
fn checks(vars: &Vars, facts: &MachineFacts, errors: &mut Vec<String>) -> Result<(), String> {
    let uefi = facts.uefi;
    // Without an IMAGE line the shell's `[ -e "$wd/$IMAGE" ] && IMAGE="$wd/$IMAGE"` finds
    // installimage's own directory, so the "file" is that directory, of no known type: the real
    // program refuses with an empty file type, not with "No valid IMAGEFILE".
    if vars.image.is_empty() {
        return Err("ERROR:  is no valid FILETYPE for images".into());
    }
    let (path_type, file, file_type) = image_types(&vars.image);
    if file.is_empty() {
        return Err("ERROR: No valid IMAGEFILE".into());
    }
    debug_assert!(matches!(path_type.as_str(), "http" | "local" | "nfs"));
    if file_type.is_empty() {
        return Err(format!(
            "ERROR: {file_type} is no valid FILETYPE for images"
        ));
    }
    let info = image_info(&file);
    let rhel8 = matches!(
        info.distro.as_str(),
        "centos" | "rockylinux" | "almalinux" | "rhel"
    ) && info.version.starts_with('8');
    if uefi && rhel8 {
        return Err(format!(
            "ERROR: we do not yet support {} {} on EFI systems",
            info.distro, info.version
        ));
    }
    if info.arch == "unknown" {
        return Err("ERROR: can not determine image arch from filename".into());
    }
    if !arch_matches(&info.arch, &facts.arch) {
        return Err(format!(
            "ERROR: can not install an {} image on a {} system",
            info.arch, facts.arch
        ));
    }

    let drive1 = vars.drives.first().cloned().flatten().unwrap_or_default();
    if !drive_is_block_device(facts, &drive1) {
        return Err(format!("ERROR: Value for DRIVE1 is not correct: {drive1} "));
    }
    if vars.swraid != "0" && vars.swraid != "1" {
        return Err("ERROR: Value for SWRAID is not correct".into());
    }
    if vars.swraid == "1" && !matches!(vars.swraid_level.as_str(), "0" | "1" | "5" | "6" | "10") {
        return Err("ERROR: Value for SWRAIDLEVEL is not correct".into());
    }

    let mut seen: Vec<String> = vec![drive1.clone()];
    for index in 1..=vars.count_drives {
        let drive = vars
            .drives
            .get(index - 1)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let format = vars.format_drives.get(index - 1).copied().unwrap_or(false);
        if index > 1 {
            for (position, earlier) in seen.iter().enumerate() {
                if *earlier == drive {
                    errors.push(format!(
                        "Duplicate DRIVE definition. {drive} used for DRIVE{} and DRIVE{index}",
                        position + 1
                    ));
                }
            }
            seen.push(drive.clone());
            if format && vars.swraid == "1" {
                return Err(format!(
                    "ERROR: FORMATDRIVE{index} _AND_ SWRAID are active - use one or none of these options, not both"
                ));
            }
        }
        if (vars.swraid == "1" || format || index == 1) && !drive_is_block_device(facts, &drive) {
            return Err(format!(
                "ERROR: Value for DRIVE{index} is not correct: {drive}"
            ));
        }
    }
    let count = vars.count_drives as u64;
    if vars.swraid == "1" && count <= 1 {
        return Err(
            "ERROR: You need to select at least 2 disks for creating software raid!".into(),
        );
    }
    if vars.swraid == "1" {
        match vars.swraid_level.as_str() {
            "5" if count < 3 => return Err("ERROR: Not enough disks for RAID level 5".into()),
            "6" if count < 4 => return Err("ERROR: Not enough disks for RAID level 6".into()),
            "10" if count < 2 => return Err("ERROR: Not enough disks for RAID level 10".into()),
            _ => {}
        }
        if matches!(vars.swraid_level.as_str(), "0" | "5" | "6" | "10")
            && !vars.parts.iter().any(|part| part.mount == "/boot")
        {
            return Err(
                "ERROR: You need a /boot partition when using software RAID level 0, 5, 6 or 10"
                    .into(),
            );
        }
    }

    // Capacity in MiB: the first drive, or the array built from the smallest one.
    let mut drive_sum = if vars.swraid == "0" {
        drive_size_mib(facts, &drive1)
    } else {
        let smallest = vars
            .drives
            .iter()
            .flatten()
            .map(|drive| drive_size_mib(facts, drive))
            .min()
            .unwrap_or(0);
        match vars.swraid_level.as_str() {
            "0" => smallest * count,
            "5" => smallest * count.saturating_sub(1),
            "6" => smallest * count.saturating_sub(2),
            "10" => smallest * (count / 2),
            _ => smallest,
        }
    } / 1024
        / 1024;
    for part in &vars.parts {
        if part.size == "all" {
            // Room for the `all` partition: at least 1 GiB.
            drive_sum = drive_sum.saturating_sub(1024);
        }
    }

    if vars.lvm
        && !vars
            .parts
            .iter()
            .any(|part| part.mount == "/boot" || part.mount == "/")
    {
        return Err("ERROR: /boot or / may not be a Logical Volume".into());
    }
    if vars.parts.len() > 3 {
        match vars.parts.iter().position(|part| part.mount == "/boot") {
            Some(position) if position + 1 > 3 => {
                return Err("ERROR: /boot must be mounted on a primary partition".into());
            }
            Some(_) => {}
            None => {
                if vars.parts.iter().skip(3).any(|part| part.mount == "/") {
                    return Err("ERROR: / must be mounted on a primary partition".into());
                }
            }
        }
    }

    if vars.parts.is_empty() {
        return Err("ERROR: The config has no partitions".into());
    }
    let mut esp_count = 0;
    let last = vars.parts.len();
    for (position, part) in vars.parts.iter().enumerate() {
        let number = position + 1;
        if !valid_part_mount(&part.mount) {
            return Err(format!(
                "ERROR: Mountpoint for partition {number} is not correct: '{}' is not a valid mountpoint",
                part.mount
            ));
        }
        let fs_ok = part.fs.starts_with("bios_grub")
            || matches!(
                part.fs.as_str(),
                "btrfs" | "ext2" | "ext3" | "ext4" | "reiserfs" | "xfs" | "swap" | "none" | "esp"
            );
        if !fs_ok && part.mount != "lvm" {
            return Err(format!(
                "ERROR: Filesystem for partition {number} is not correct"
            ));
        }
        if part.fs == "none" && part.mount != "none" {
            return Err(format!(
                "ERROR: No filesystem for partition {number}, but mounted to {}",
                part.mount
            ));
        }
        if part.fs == "esp" && part.mount.contains("crypt") {
            return Err("Error: ESP partition can't be crypted".into());
        }
        if part.fs == "reiserfs"
            && matches!(info.distro.as_str(), "almalinux" | "centos" | "rockylinux")
        {
            return Err(format!(
                "ERROR: reiserfs is not supported for {}",
                info.distro
            ));
        }
        if part.fs == "esp" {
            esp_count += 1;
            if part.mount != "/boot/efi" {
                return Err(
                    "ERROR: EFI System Partition (ESP) must be mounted at /boot/efi".into(),
                );
            }
            if part.size == "all" {
                return Err(
                    "ERROR: EFI System Partition MUST NOT be all remaining disk space".into(),
                );
            }
            if numeric(&part.size).is_some_and(|size| size < 256) {
                return Err(format!(
                    "ERROR: EFI System Partition (ESP) has to be at least 256M (current size: {})",
                    part.size
                ));
            }
        }
        if part.fs == "btrfs" {
            match info.distro.as_str() {
                "centos" => {
                    let version: u64 = info.version.parse().unwrap_or(0);
                    if version < 62 {
                        return Err("ERROR: CentOS older than 6.2 doesn't support btrfs".into());
                    }
                    if version >= 80 && version != 610 {
                        return Err("ERROR: CentOS 8 doesn't support btrfs".into());
                    }
                }
                "rockylinux" => return Err("ERROR: Rocky Linux doesn't support btrfs".into()),
                "almalinux" => return Err("ERROR: AlmaLinux doesn't support btrfs".into()),
                _ => {}
            }
        }
        if part.size == "all" && number < last {
            return Err("ERROR: Partition size \"all\" has to be on the last partition".into());
        }
        if (part.size != "all" && numeric(&part.size).is_none()) || part.size == "0" {
            return Err(format!(
                "ERROR: The size of the partition PART {} is not a valid number",
                part.mount
            ));
        }
        if part.mount == "/boot" && numeric(&part.size).is_some_and(|size| size < 200) {
            return Err(format!(
                "ERROR: Your /boot partition has to be at least 200M (current size: {})",
                part.size
            ));
        }
        if part.mount == "/" && numeric(&part.size).is_some_and(|size| size < 1500) {
            return Err(format!(
                "ERROR: Your / partition has to be at least 1500M (current size: {})",
                part.size
            ));
        }
    }
    if uefi && esp_count != 1 {
        return Err("ERROR: ESP missing or multiple ESP found".into());
    }

    if vars.bootloader != "grub" {
        return Err("ERROR: No valid BOOTLOADER".into());
    }
    if !matches!(
        vars.governor.to_lowercase().as_str(),
        "powersave" | "performance" | "ondemand"
    ) {
        return Err("ERROR: No valid GOVERNOR".into());
    }

    if !vars.lvm && !vars.volume_groups.is_empty() {
        return Err(
            "ERROR: There are volume groups defined, but no logical volumes are defined".into(),
        );
    }
    if !vars.lvm && !vars.logical_volumes.is_empty() {
        return Err(
            "ERROR: There are logical volumes defined, but no volume groups are defined".into(),
        );
    }
    for (position, volume) in vars.logical_volumes.iter().enumerate() {
        let mount_ok =
            volume.mount.starts_with('/') || matches!(volume.mount.as_str(), "swap" | "none");
        if !mount_ok {
            return Err(format!(
                "ERROR: Mountpoint for LV '{}' is not correct",
                volume.name
            ));
        }
        if !matches!(
            volume.fs.as_str(),
            "btrfs" | "ext2" | "ext3" | "ext4" | "reiserfs" | "xfs" | "swap" | "none"
        ) {
            return Err(format!(
                "ERROR: Filesystem for LV '{}' is not correct",
                volume.name
            ));
        }
        if volume.fs == "reiserfs" && info.distro == "centos" {
            return Err("ERROR: reiserfs is not supported for CentOS".into());
        }
        if (volume.size != "all" && numeric(&volume.size).is_none()) || volume.size == "0" {
            return Err(format!(
                "ERROR: size of LV '{}' is not a valid number",
                volume.name
            ));
        }
        if volume.mount == "/" && numeric(&volume.size).is_some_and(|size| size < 1500) {
            return Err("ERROR: Your / partition has to be at least 1500M".into());
        }
        let last_in_vg = vars
            .logical_volumes
            .iter()
            .rposition(|other| other.vg == volume.vg);
        if volume.size == "all" && last_in_vg != Some(position) {
            return Err(format!(
                "ERROR: LV size 'all' has to be on the last LV in VG {}.",
                volume.vg
            ));
        }
    }
    for volume in &vars.logical_volumes {
        if !vars
            .volume_groups
            .iter()
            .any(|group| group.name == volume.vg)
        {
            return Err(format!(
                "ERROR: LVM volume group '{}' not defined",
                volume.vg
            ));
        }
    }

    if !vars.btrfs && !vars.btrfs_volumes.is_empty() {
        return Err("ERROR: There are btrfs volumes defined, but no subvolumes defined".into());
    }
    if !vars.btrfs && !vars.subvolumes.is_empty() {
        return Err("ERROR: There are btrfs subvolumes defined, but no volumes defined".into());
    }
    for volume in &vars.btrfs_volumes {
        for subvolume in &vars.subvolumes {
            if !subvolume.mount.starts_with('/') {
                return Err(format!(
                    "ERROR: Mountpoint for btrfs subvolume '{}' is not correct",
                    subvolume.name
                ));
            }
        }
        if !vars
            .subvolumes
            .iter()
            .any(|subvolume| &subvolume.volume == volume)
        {
            return Err(format!(
                "ERROR: No subvolumes defined for btrfs volume '{volume}'"
            ));
        }
    }
    for subvolume in &vars.subvolumes {
        if !vars.btrfs_volumes.contains(&subvolume.volume) {
            return Err(format!(
                "ERROR: BTRFS volume '{}' not defined",
                subvolume.volume
            ));
        }
    }

    let mut mounts: Vec<&str> = vars
        .parts
        .iter()
        .map(|part| part.mount.as_str())
        .filter(|mount| !matches!(*mount, "lvm" | "swap" | "none"))
        .chain(
            vars.logical_volumes
                .iter()
                .map(|volume| volume.mount.as_str())
                .filter(|mount| *mount != "none"),
        )
        .chain(
            vars.subvolumes
                .iter()
                .map(|subvolume| subvolume.mount.as_str()),
        )
        .collect();
    mounts.sort_unstable();
    let mut duplicates: Vec<&str> = mounts
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    duplicates.dedup();
    if let Some(first) = duplicates.first() {
        let list = duplicates.join("\n");
        if first.starts_with("btrfs.") {
            return Err(format!(
                "ERROR: Duplicate btrfs volumes in config ({list}). Multi-device volumes are not supported"
            ));
        }
        return Err(format!(
            "ERROR: There are identical mountpoints in the config ({list})"
        ));
    }

    if drive_sum < vars.parts_sum_size {
        let diff = drive_sum as i64 - vars.parts_sum_size as i64;
        return Err(format!(
            "ERROR: You are going to use more space than your drives have available.\nUsage: {} MiB of {drive_sum} MiB\nDiff: {diff} MiB",
            vars.parts_sum_size
        ));
    }
    if !vars.has_root {
        return Err("ERROR: You dont have a partition for /".into());
    }
    if vars.hostname.is_empty() {
        return Err("ERROR: HOSTNAME may not be empty".into());
    }
    if vars.crypt && vars.crypt_password.is_empty() {
        return Err("ERROR: Value for CRYPTPASSWORD is not defined".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distro_and_arch_from_the_name() {
        let info = image_info("Ubuntu-2404-noble-amd64-k8s.tar.gz");
        assert_eq!(
            (
                info.distro.as_str(),
                info.version.as_str(),
                info.arch.as_str()
            ),
            ("ubuntu", "2404", "amd64")
        );
        assert_eq!(
            image_info("Debian-1208-bookworm-arm64-base.tar.zst").distro,
            "debian"
        );
        assert_eq!(
            image_info("Debian-12-research-amd64-x.tar.gz").distro,
            "archlinux"
        );
        assert_eq!(
            image_info("Debian-12-bookworm-x86_64.tar.gz").arch,
            "unknown"
        );
        assert_eq!(image_info("image.tar.gz").arch, "image.tar.gz");
        assert_eq!(image_info("a-64-b-amd64-c.tar").arch, "amd64");
    }

    #[test]
    fn image_sources() {
        assert_eq!(image_types("/root/x.tar.gz").0, "local");
        assert_eq!(image_types("https://h/x.tgz").0, "http");
        assert_eq!(image_types("ftp://h/x.tgz").0, "http");
        assert_eq!(image_types("host:/export/x.tar").0, "nfs");
        assert_eq!(image_types("x.tar.zst").2, "zst");
        assert_eq!(image_types("/x.tar.lz4").2, "");
    }
}
