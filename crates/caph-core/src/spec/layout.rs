//! Disk layouts for installimage, and the rules installimage applies to them.
//!
//! The model mirrors installimage's own lines (`DRIVE`, `SWRAID`, `PART`, `LV`), so the same rules
//! serve a spec's `[robot.disk]` and a parsed autosetup file. Rules that need the machine (is a
//! drive a block device, does the layout fit the disks) are left to installimage itself.

use std::collections::BTreeSet;
use std::fmt;

/// A partition or volume size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A fixed size in MiB.
    MiB(u64),
    /// The rest of the disk (or volume group).
    All,
}

impl Size {
    /// Parses installimage's size syntax: `512M`, `512MiB`, `2G`, `2GiB`, `1T`, `1TiB`, a bare number of MiB, or `all`.
    pub fn parse(text: &str) -> Result<Size, String> {
        if text == "all" {
            return Ok(Size::All);
        }
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        let factor = match unit {
            "" | "M" | "MiB" => 1,
            "G" | "GiB" => 1024,
            "T" | "TiB" => 1024 * 1024,
            _ => {
                return Err(
                    "is not a size: use a number with M, G or T (MiB, GiB, TiB), or all"
                        .to_string(),
                );
            }
        };
        let value: u64 = number.parse().map_err(|_| {
            "is not a size: use a number with M, G or T (MiB, GiB, TiB), or all".to_string()
        })?;
        if value == 0 {
            return Err("must not be zero".to_string());
        }
        value
            .checked_mul(factor)
            .map(Size::MiB)
            .ok_or_else(|| "is too large".to_string())
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::All => f.write_str("all"),
            Size::MiB(mib) if mib % (1024 * 1024) == 0 => write!(f, "{}T", mib / (1024 * 1024)),
            Size::MiB(mib) if mib % 1024 == 0 => write!(f, "{}G", mib / 1024),
            Size::MiB(mib) => write!(f, "{mib}M"),
        }
    }
}

/// One `PART` line. For an LVM physical volume, `mount` is `lvm` and `filesystem` names the volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Mount point, `swap`, `none` or `lvm`.
    pub mount: String,
    /// File system, or the volume group for `lvm`.
    pub filesystem: String,
    /// Size.
    pub size: Size,
    /// Encrypted with LUKS by installimage (`crypt` after the size), with
    /// [`DiskLayout::crypt_password`] as the passphrase.
    pub crypt: bool,
}

/// One `LV` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    /// Volume group.
    pub vg: String,
    /// Volume name.
    pub name: String,
    /// Mount point, `swap` or `none`.
    pub mount: String,
    /// File system.
    pub filesystem: String,
    /// Size.
    pub size: Size,
}

/// How a layout names a drive: by its device, or by a hint that the drives the rescue system
/// reports resolve (a server's device names are not stable across boots and models; its
/// drives' WWNs are, and "the smallest drives of equal size" describes the usual system pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveRef<'a> {
    /// `/dev/sda`, `/dev/nvme0n1`.
    Device(&'a str),
    /// `wwn:0x5002538e40a1b2c3`: the drive whose World Wide Name `lsblk -o WWN` shows so.
    Wwn(&'a str),
    /// `smallest`: one of the smallest drives of equal size, as many as the layout lists.
    Smallest,
}

/// The prefix of a WWN drive hint.
pub const WWN_HINT_PREFIX: &str = "wwn:";
/// The smallest-drives hint.
pub const SMALLEST_HINT: &str = "smallest";

impl<'a> DriveRef<'a> {
    /// Reads a layout's drive entry; `None` when it is neither a device path nor a hint.
    pub fn parse(text: &'a str) -> Option<DriveRef<'a>> {
        if text == SMALLEST_HINT {
            return Some(DriveRef::Smallest);
        }
        if let Some(wwn) = text.strip_prefix(WWN_HINT_PREFIX) {
            let valid = !wwn.is_empty()
                && wwn
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
            return valid.then_some(DriveRef::Wwn(wwn));
        }
        text.starts_with("/dev/").then_some(DriveRef::Device(text))
    }
}

/// A whole installimage disk layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Drives in order (`DRIVE1`, `DRIVE2`, ...): device paths, or hints (see [`DriveRef`])
    /// that an install resolves against the drives the rescue system reports.
    pub drives: Vec<String>,
    /// Software RAID level, when software RAID is on (`SWRAID 1` + `SWRAIDLEVEL`).
    pub raid_level: Option<u8>,
    /// Whether the machine boots by UEFI, which needs exactly one ESP.
    pub uefi: bool,
    /// Partitions in order.
    pub partitions: Vec<Partition>,
    /// Logical volumes in order.
    pub volumes: Vec<LogicalVolume>,
    /// installimage's `CRYPTPASSWORD`: the passphrase of the partitions with `crypt`.
    pub crypt_password: Option<CryptPassword>,
}

/// A LUKS passphrase for installimage's `CRYPTPASSWORD`. A secret: `Debug` does not show it,
/// and nothing prints it; only the autosetup file written for installimage holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptPassword(String);

impl CryptPassword {
    /// Wraps a passphrase.
    pub fn new(passphrase: impl Into<String>) -> CryptPassword {
        CryptPassword(passphrase.into())
    }

    /// The passphrase itself, for the autosetup file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CryptPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CryptPassword(<redacted>)")
    }
}

/// A rule the layout breaks, with the field it concerns (relative to the layout, e.g. `partitions[2].size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutProblem {
    /// The field, relative to the layout.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// File systems a `PART` line may use.
pub const PARTITION_FILESYSTEMS: &[&str] = &[
    "bios_grub",
    "btrfs",
    "ext2",
    "ext3",
    "ext4",
    "reiserfs",
    "xfs",
    "swap",
    "none",
    "esp",
];
/// File systems an `LV` line may use.
pub const VOLUME_FILESYSTEMS: &[&str] = &[
    "btrfs", "ext2", "ext3", "ext4", "reiserfs", "xfs", "swap", "none",
];
/// RAID levels installimage knows.
pub const RAID_LEVELS: &[u8] = &[0, 1, 5, 6, 10];

/// The smallest `/boot` installimage accepts, in MiB.
const MIN_BOOT_MIB: u64 = 200;
/// The smallest `/` installimage accepts, in MiB.
const MIN_ROOT_MIB: u64 = 1500;
/// The smallest ESP installimage accepts, in MiB.
const MIN_ESP_MIB: u64 = 256;

/// Checks a layout against installimage's rules; returns every problem found, in field order.
pub fn validate_layout(layout: &DiskLayout) -> Vec<LayoutProblem> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String, help: Option<&str>| {
        problems.push(LayoutProblem {
            field,
            message,
            help: help.map(str::to_string),
        });
    };

    // Every value is one field of an autosetup line (`PART /boot ext4 1G`): a blank, a `#` or a
    // line break in one would change what installimage reads. Nothing else is checked on such
    // a layout, since every other rule would read the value differently than installimage.
    let mut unfit = false;
    for (field, value) in field_values(layout) {
        if let Err(why) = crate::text::check_field(value) {
            unfit = true;
            problem(
                field,
                format!(
                    "\"{}\" {}, which an autosetup line cannot hold in one field",
                    crate::text::Escaped(value),
                    why.describe()
                ),
                Some("write it as one word, without blanks or #"),
            );
        }
    }
    if unfit {
        return problems;
    }

    // Drives.
    if layout.drives.is_empty() {
        problem(
            "drives".into(),
            "is empty".into(),
            Some("name at least one drive, for example \"/dev/sda\""),
        );
    }
    let mut seen_drives = BTreeSet::new();
    let smallest = layout
        .drives
        .iter()
        .filter(|drive| drive.as_str() == SMALLEST_HINT)
        .count();
    for (index, drive) in layout.drives.iter().enumerate() {
        let normal = crate::text::normal_path(drive);
        match DriveRef::parse(drive) {
            None => {
                problem(
                    format!("drives[{index}]"),
                    format!("\"{drive}\" is neither a device path nor a drive hint"),
                    Some(
                        "use a path under /dev/ (\"/dev/nvme0n1\"), a WWN as lsblk shows it (\"wwn:0x5002538e40a1b2c3\"), or \"smallest\"",
                    ),
                );
                continue;
            }
            Some(DriveRef::Smallest) => {
                if smallest != layout.drives.len() {
                    problem(
                        format!("drives[{index}]"),
                        "\"smallest\" picks drives by size and cannot be mixed with drives named otherwise".into(),
                        Some("list \"smallest\" once per drive, or name every drive"),
                    );
                }
                continue;
            }
            Some(DriveRef::Wwn(_)) | Some(DriveRef::Device(_)) => {}
        }
        if drive.starts_with("/dev/") && drive.split('/').any(|part| part == "..") {
            problem(
                format!("drives[{index}]"),
                format!("\"{drive}\" is not a device path"),
                Some("use a path under /dev/, for example \"/dev/nvme0n1\""),
            );
        } else if drive.starts_with("/dev/") && normal != *drive {
            // `/dev//sda` and `/dev/sda` are one drive; compared as written, it could be listed twice.
            problem(
                format!("drives[{index}]"),
                format!("\"{drive}\" is not in normal form"),
                Some(&format!("write \"{normal}\"")),
            );
        } else if !seen_drives.insert(drive) {
            problem(
                format!("drives[{index}]"),
                format!("\"{drive}\" is listed twice"),
                Some("name each drive once"),
            );
        }
    }

    // Software RAID.
    if let Some(level) = layout.raid_level {
        let needed = match level {
            5 => 3,
            6 => 4,
            _ => 2,
        };
        if !RAID_LEVELS.contains(&level) {
            problem(
                "raid_level".into(),
                format!("{level} is not a RAID level installimage knows"),
                Some("use 0, 1, 5, 6 or 10"),
            );
        } else if layout.drives.len() < needed {
            problem(
                "raid_level".into(),
                format!(
                    "RAID {level} needs at least {needed} drives, but {} {} listed",
                    layout.drives.len(),
                    if layout.drives.len() == 1 {
                        "is"
                    } else {
                        "are"
                    }
                ),
                Some(if needed == 2 {
                    "add a drive, or remove raid_level"
                } else {
                    "add drives, or choose RAID 1"
                }),
            );
        }
        if matches!(level, 0 | 5 | 6 | 10) && !layout.partitions.iter().any(|p| p.mount == "/boot")
        {
            problem(
                "raid_level".into(),
                format!("RAID {level} needs a separate /boot partition"),
                Some("add a partition with mount = \"/boot\""),
            );
        }
    }

    // Partitions.
    if layout.partitions.is_empty() {
        problem(
            "partitions".into(),
            "is empty".into(),
            Some("add at least one [[robot.disk.partitions]] entry"),
        );
    }
    let last_partition = layout.partitions.len().saturating_sub(1);
    let mut esp_count = 0;
    for (index, partition) in layout.partitions.iter().enumerate() {
        let field = |name: &str| format!("partitions[{index}].{name}");
        let mount = partition.mount.as_str();
        if mount == "lvm" {
            if !is_word(&partition.filesystem) {
                problem(
                    field("volume_group"),
                    format!("\"{}\" is not a volume group name", partition.filesystem),
                    Some("use letters, digits and _"),
                );
            }
        } else {
            if !is_partition_mount(mount) {
                problem(
                    field("mount"),
                    format!("\"{mount}\" is not a mount point"),
                    Some("use an absolute path such as /boot, or swap, none or lvm"),
                );
            }
            if !PARTITION_FILESYSTEMS.contains(&partition.filesystem.as_str()) {
                problem(
                    field("filesystem"),
                    format!(
                        "\"{}\" is not a file system installimage knows",
                        partition.filesystem
                    ),
                    Some(
                        "use one of bios_grub, btrfs, ext2, ext3, ext4, reiserfs, xfs, swap, none, esp",
                    ),
                );
            }
            if partition.filesystem == "none" && mount != "none" {
                problem(
                    field("filesystem"),
                    format!("none needs mount = \"none\", not \"{mount}\""),
                    Some("set mount = \"none\", or choose a file system"),
                );
            }
        }
        if partition.filesystem == "esp" {
            esp_count += 1;
            if mount != "/boot/efi" {
                problem(
                    field("mount"),
                    format!("an esp partition must be mounted at /boot/efi, not \"{mount}\""),
                    Some("set mount = \"/boot/efi\""),
                );
            }
            match partition.size {
                Size::All => problem(
                    field("size"),
                    "all is not allowed for an esp partition".into(),
                    Some("give the ESP a fixed size such as 512M"),
                ),
                Size::MiB(mib) if mib < MIN_ESP_MIB => problem(
                    field("size"),
                    format!("{} is too small for an ESP", partition.size),
                    Some("use at least 256M"),
                ),
                Size::MiB(_) => {}
            }
        }
        if partition.size == Size::All && index != last_partition {
            problem(
                field("size"),
                "all is only allowed on the last partition".into(),
                Some("move this partition to the end, or give it a fixed size"),
            );
        }
        check_minimum(mount, partition.size, &field("size"), &mut problem);
    }
    check_encryption(layout, &mut problem);
    if layout.uefi && esp_count != 1 {
        problem(
            "partitions".into(),
            format!("a UEFI layout needs exactly one esp partition, found {esp_count}"),
            Some(
                "add one partition with mount = \"/boot/efi\", filesystem = \"esp\", size = \"512M\"",
            ),
        );
    }
    let plain_mounts: Vec<&str> = layout.partitions.iter().map(|p| p.mount.as_str()).collect();
    if !plain_mounts.contains(&"/boot")
        && !plain_mounts.contains(&"/")
        && !layout.partitions.is_empty()
    {
        problem(
            "partitions".into(),
            "neither /boot nor / is a plain partition".into(),
            Some("add a /boot partition; / may then live on LVM"),
        );
    }
    if layout.partitions.len() > 3 {
        let anchor = if plain_mounts.contains(&"/boot") {
            "/boot"
        } else {
            "/"
        };
        if plain_mounts.iter().take(3).all(|mount| *mount != anchor) {
            problem(
                "partitions".into(),
                format!("with more than 3 partitions, {anchor} must be among the first 3"),
                Some("move it up"),
            );
        }
    }

    // Logical volumes. Sets and last positions are computed once, so that the rules stay linear
    // in the size of the layout.
    let groups: Vec<&str> = layout
        .partitions
        .iter()
        .filter(|p| p.mount == "lvm")
        .map(|p| p.filesystem.as_str())
        .collect();
    let group_set: BTreeSet<&str> = groups.iter().copied().collect();
    let mut last_volume_of_group: std::collections::BTreeMap<&str, usize> = Default::default();
    for (index, volume) in layout.volumes.iter().enumerate() {
        last_volume_of_group.insert(volume.vg.as_str(), index);
    }
    for (index, volume) in layout.volumes.iter().enumerate() {
        let field = |name: &str| format!("volumes[{index}].{name}");
        if !group_set.contains(volume.vg.as_str()) {
            problem(
                field("vg"),
                format!("volume group \"{}\" is not defined", volume.vg),
                Some("add a partition with mount = \"lvm\" and this volume_group"),
            );
        }
        if !is_word(&volume.name) {
            problem(
                field("name"),
                format!("\"{}\" is not a volume name", volume.name),
                Some("use letters, digits and _"),
            );
        }
        if !(volume.mount.starts_with('/') || volume.mount == "swap" || volume.mount == "none") {
            problem(
                field("mount"),
                format!("\"{}\" is not a mount point", volume.mount),
                Some("use an absolute path, swap or none"),
            );
        }
        if !VOLUME_FILESYSTEMS.contains(&volume.filesystem.as_str()) {
            problem(
                field("filesystem"),
                format!(
                    "\"{}\" is not a file system installimage knows for a volume",
                    volume.filesystem
                ),
                Some("use one of btrfs, ext2, ext3, ext4, reiserfs, xfs, swap, none"),
            );
        }
        let last_in_group = last_volume_of_group.get(volume.vg.as_str()) == Some(&index);
        if volume.size == Size::All && !last_in_group {
            problem(
                field("size"),
                format!("all is only allowed on the last volume of {}", volume.vg),
                Some("move this volume to the end of its group, or give it a fixed size"),
            );
        }
        check_minimum(&volume.mount, volume.size, &field("size"), &mut problem);
    }
    let lvm_partitions: Vec<usize> = layout
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.mount == "lvm")
        .map(|(i, _)| i)
        .collect();
    for (index, group) in groups.iter().enumerate() {
        if !last_volume_of_group.contains_key(group) {
            let position = lvm_partitions.get(index).copied().unwrap_or(0);
            problem(
                format!("partitions[{position}].volume_group"),
                format!("volume group \"{group}\" has no volumes"),
                Some("add [[robot.disk.volumes]] entries for it, or remove the partition"),
            );
        }
    }

    // Mount points across partitions and volumes.
    let mut mounted = BTreeSet::new();
    let all_mounts = layout
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| (format!("partitions[{index}].mount"), p.mount.as_str()))
        .chain(
            layout
                .volumes
                .iter()
                .enumerate()
                .map(|(index, v)| (format!("volumes[{index}].mount"), v.mount.as_str())),
        );
    for (field, mount) in all_mounts {
        if mount.starts_with('/') && !mounted.insert(mount) {
            problem(
                field,
                format!("{mount} is mounted twice"),
                Some("keep one partition or volume per mount point"),
            );
        }
    }
    let has_mounts = !layout.partitions.is_empty() || !layout.volumes.is_empty();
    if has_mounts && !mounted.contains("/") {
        problem(
            "partitions".into(),
            "nothing is mounted at /".into(),
            Some("add a partition or volume with mount = \"/\""),
        );
    }
    problems
}

/// installimage's rules for `crypt` and `CRYPTPASSWORD`: a partition with `crypt` needs a
/// passphrase ("Value for CRYPTPASSWORD is not defined"), which is read up to the end of its
/// line. (installimage means to refuse an encrypted ESP, but its check looks at the mount
/// point, so it accepts one; so does this.) The passphrase never appears in a message.
fn check_encryption(layout: &DiskLayout, problem: &mut impl FnMut(String, String, Option<&str>)) {
    let encrypted = layout.partitions.iter().position(|p| p.crypt);
    match (&layout.crypt_password, encrypted) {
        (None, Some(index)) => problem(
            format!("partitions[{index}].crypt"),
            "asks for encryption, but no CRYPTPASSWORD is given".into(),
            Some("add a CRYPTPASSWORD line with the passphrase"),
        ),
        (Some(password), _) if password.expose().is_empty() => problem(
            "crypt_password".into(),
            "is empty".into(),
            Some("give the passphrase after CRYPTPASSWORD"),
        ),
        (Some(password), _) => {
            if let Err(why) = crate::text::check_line(password.expose()) {
                let what = match why {
                    crate::text::LineProblem::LineBreak(_) => "a line break",
                    _ => "a control character",
                };
                problem(
                    "crypt_password".into(),
                    format!("holds {what}: installimage reads it up to the end of its line"),
                    Some("choose a passphrase of printable characters"),
                );
            }
        }
        (None, None) => {}
    }
}

/// Every text value of the layout with its field, as [`LayoutProblem::field`] names it.
fn field_values(layout: &DiskLayout) -> Vec<(String, &str)> {
    let mut values = Vec::new();
    for (index, drive) in layout.drives.iter().enumerate() {
        values.push((format!("drives[{index}]"), drive.as_str()));
    }
    for (index, partition) in layout.partitions.iter().enumerate() {
        let second = if partition.mount == "lvm" {
            "volume_group"
        } else {
            "filesystem"
        };
        values.push((
            format!("partitions[{index}].mount"),
            partition.mount.as_str(),
        ));
        values.push((
            format!("partitions[{index}].{second}"),
            partition.filesystem.as_str(),
        ));
    }
    for (index, volume) in layout.volumes.iter().enumerate() {
        for (name, value) in [
            ("vg", &volume.vg),
            ("name", &volume.name),
            ("mount", &volume.mount),
            ("filesystem", &volume.filesystem),
        ] {
            values.push((format!("volumes[{index}].{name}"), value.as_str()));
        }
    }
    values
}

fn check_minimum(
    mount: &str,
    size: Size,
    field: &str,
    problem: &mut impl FnMut(String, String, Option<&str>),
) {
    let Size::MiB(mib) = size else { return };
    if mount == "/boot" && mib < MIN_BOOT_MIB {
        problem(
            field.to_string(),
            format!("{size} is too small for /boot"),
            Some("use at least 200M"),
        );
    }
    if mount == "/" && mib < MIN_ROOT_MIB {
        problem(
            field.to_string(),
            format!("{size} is too small for /"),
            Some("use at least 1500M"),
        );
    }
}

/// installimage's PART mount pattern: `^(/\w*|none$|swap$|lvm$|btrfs\.\w+)`, anchored at both ends here.
fn is_partition_mount(mount: &str) -> bool {
    if matches!(mount, "none" | "swap" | "lvm") {
        return true;
    }
    if let Some(rest) = mount.strip_prefix("btrfs.") {
        return is_word(rest);
    }
    mount.starts_with('/')
        && mount[1..]
            .split('/')
            .all(|part| part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn is_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("512M"), Ok(Size::MiB(512)));
        assert_eq!(Size::parse("2G"), Ok(Size::MiB(2048)));
        assert_eq!(Size::parse("1TiB"), Ok(Size::MiB(1024 * 1024)));
        assert_eq!(Size::parse("100"), Ok(Size::MiB(100)));
        assert_eq!(Size::parse("all"), Ok(Size::All));
        assert!(Size::parse("0").is_err());
        assert!(Size::parse("5X").is_err());
        assert!(Size::parse("").is_err());
        assert_eq!(Size::MiB(2048).to_string(), "2G");
    }

    fn two_partitions(drives: &[&str], raid_level: Option<u8>) -> DiskLayout {
        let partition = |mount: &str, size| Partition {
            mount: mount.into(),
            filesystem: "ext4".into(),
            size,
            crypt: false,
        };
        DiskLayout {
            drives: drives.iter().map(|drive| drive.to_string()).collect(),
            raid_level,
            uefi: false,
            partitions: vec![
                partition("/boot", Size::MiB(1024)),
                partition("/", Size::All),
            ],
            volumes: Vec::new(),
            crypt_password: None,
        }
    }

    #[test]
    fn drives_are_devices_or_hints() {
        let problems = |drives: &[&str], raid_level| -> Vec<String> {
            validate_layout(&two_partitions(drives, raid_level))
                .into_iter()
                .map(|problem| format!("{}: {}", problem.field, problem.message))
                .collect()
        };
        assert!(problems(&["/dev/nvme0n1"], None).is_empty());
        assert!(problems(&["wwn:0x5002538e40a1b2c3", "wwn:eui.0025388"], Some(1)).is_empty());
        assert!(problems(&["smallest", "smallest"], Some(1)).is_empty());
        assert_eq!(
            problems(&["smallest", "/dev/sdb"], Some(1)),
            [
                "drives[0]: \"smallest\" picks drives by size and cannot be mixed with drives named otherwise"
            ]
        );
        assert_eq!(
            problems(&["sda"], None),
            ["drives[0]: \"sda\" is neither a device path nor a drive hint"]
        );
        assert_eq!(
            problems(&["wwn:"], None),
            ["drives[0]: \"wwn:\" is neither a device path nor a drive hint"]
        );
        assert_eq!(
            problems(&["wwn:0x1", "wwn:0x1"], Some(1)),
            ["drives[1]: \"wwn:0x1\" is listed twice"]
        );
    }
}
