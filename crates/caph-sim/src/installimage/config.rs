//! Reads an autosetup file the way installimage's `read_vars` does: `grep -m1 ^KEY | awk '{print $2}'`.
//!
//! The quirks are kept on purpose, because a client must live with them: the first matching line
//! wins; keys match as prefixes (`DRIVE1` also matches a `DRIVE10` line, an `SWRAIDLEVEL` line
//! before `SWRAID` is read as `SWRAID`); a value is the second whitespace-separated field, so a
//! trailing comment after it is ignored and a line with leading blanks matches nothing.

use super::MachineFacts;

/// `grep -m1 ^key | awk '{print $2}'`: the second field of the first line starting with `key`.
pub(crate) fn value(text: &str, key: &str) -> String {
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned()
}

/// `awk '{print $n}'` (1-based) of one line.
fn field(line: &str, index: usize) -> String {
    line.split_whitespace()
        .nth(index - 1)
        .unwrap_or_default()
        .to_owned()
}

/// installimage's `translate_unit`: `<digits>M|MiB|G|GiB|T|TiB` to MiB; anything else unchanged
/// (`all`, a bare number, or garbage that a later check rejects).
pub(crate) fn translate_unit(size: &str) -> String {
    for (unit, factor) in [
        ("M", 1u64),
        ("MiB", 1),
        ("G", 1024),
        ("GiB", 1024),
        ("T", 1_048_576),
        ("TiB", 1_048_576),
    ] {
        if let Some(digits) = size.strip_suffix(unit)
            && !digits.is_empty()
            && digits.bytes().all(|byte| byte.is_ascii_digit())
        {
            return match digits.parse::<u64>() {
                Ok(number) => number.saturating_mul(factor).to_string(),
                Err(_) => size.to_owned(),
            };
        }
    }
    size.to_owned()
}

/// A size as bash's `[ "$size" -lt N ]` sees it: a number, or `None` (bash errors and the test is
/// false).
pub(crate) fn numeric(size: &str) -> Option<u64> {
    if !size.is_empty() && size.bytes().all(|byte| byte.is_ascii_digit()) {
        size.parse().ok()
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) mount: String,
    pub(crate) fs: String,
    /// In MiB after `translate_unit` (before RAID scaling), `all`, or the raw text if invalid.
    pub(crate) size: String,
    /// After RAID scaling: what installimage adds to the partition sum.
    pub(crate) scaled_size: String,
    pub(crate) crypt: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeGroup {
    pub(crate) name: String,
    pub(crate) size: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogicalVolume {
    pub(crate) vg: String,
    pub(crate) name: String,
    pub(crate) mount: String,
    pub(crate) fs: String,
    pub(crate) size: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subvolume {
    pub(crate) volume: String,
    pub(crate) name: String,
    pub(crate) mount: String,
}

/// The variables `read_vars` sets, with the same defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vars {
    /// `DRIVE1..DRIVEn` for n = the machine's drive count; `None` where unset.
    pub(crate) drives: Vec<Option<String>>,
    pub(crate) format_drives: Vec<bool>,
    /// Drives set in the config.
    pub(crate) count_drives: usize,
    pub(crate) swraid: String,
    pub(crate) swraid_level: String,
    pub(crate) parts: Vec<Part>,
    /// Sum of the fixed partition sizes (and LVs of `all`-sized VGs), MiB.
    pub(crate) parts_sum_size: u64,
    pub(crate) has_root: bool,
    pub(crate) crypt: bool,
    pub(crate) crypt_password: String,
    pub(crate) volume_groups: Vec<VolumeGroup>,
    pub(crate) logical_volumes: Vec<LogicalVolume>,
    pub(crate) lvm: bool,
    /// `PART btrfs.<id> ...` mount fields.
    pub(crate) btrfs_volumes: Vec<String>,
    pub(crate) subvolumes: Vec<Subvolume>,
    pub(crate) btrfs: bool,
    pub(crate) image: String,
    pub(crate) bootloader: String,
    pub(crate) hostname: String,
    pub(crate) governor: String,
    pub(crate) force_gpt: String,
}

/// installimage's defaults (`DEFAULTLOADER`, `DEFAULTGOVERNOR` in config.sh).
const DEFAULT_LOADER: &str = "grub";
const DEFAULT_GOVERNOR: &str = "ondemand";

pub(crate) fn read_vars(text: &str, facts: &MachineFacts) -> Vars {
    let machine_drives = facts.drives.len().max(1);
    let mut drives = Vec::new();
    let mut format_drives = Vec::new();
    let mut count_drives = 0;
    for index in 1..=machine_drives {
        let disk = value(text, &format!("DRIVE{index}"));
        if disk.is_empty() {
            drives.push(None);
        } else {
            count_drives += 1;
            drives.push(Some(disk));
        }
        format_drives.push(!value(text, &format!("FORMATDRIVE{index}")).is_empty());
    }
    let mut swraid = value(text, "SWRAID");
    if swraid.is_empty() {
        swraid = "0".into();
    }
    let mut swraid_level = value(text, "SWRAIDLEVEL");
    if swraid_level.is_empty() {
        swraid_level = "1".into();
    }

    let mut parts = Vec::new();
    let mut parts_sum_size: u64 = 0;
    let mut has_root = false;
    let mut crypt = false;
    for line in text.lines().filter(|line| line.starts_with("PART ")) {
        let mount = field(line, 2);
        let size = translate_unit(&field(line, 4));
        let mut scaled_size = size.clone();
        if swraid == "1"
            && let Some(number) = numeric(&size)
        {
            let count = count_drives as u64;
            let divisor = match swraid_level.as_str() {
                "0" => Some(count),
                "5" => Some(count.saturating_sub(1)),
                "6" => Some(count.saturating_sub(2)),
                "10" => Some(count / 2),
                _ => None,
            };
            let scaled_mount = mount != "/boot" && mount != "/boot/efi" && mount != "swap";
            if let Some(divisor) = divisor
                && divisor > 0
                && (scaled_mount || (mount == "swap" && swraid_level == "0"))
            {
                scaled_size = (number / divisor).to_string();
            }
        }
        if let Some(number) = numeric(&scaled_size) {
            parts_sum_size = parts_sum_size.saturating_add(number);
        }
        if mount == "/" {
            has_root = true;
        }
        let crypt_field = field(line, 5);
        if !crypt_field.is_empty() {
            crypt = true;
        }
        parts.push(Part {
            fs: field(line, 3),
            mount,
            size,
            scaled_size,
            crypt: crypt_field,
        });
    }

    // `egrep '^PART *lvm '`: any number of spaces between PART and lvm.
    let is_vg_line = |line: &&str| {
        line.strip_prefix("PART")
            .map(|rest| rest.trim_start_matches(' ').starts_with("lvm "))
            .unwrap_or(false)
    };
    let volume_groups: Vec<VolumeGroup> = text
        .lines()
        .filter(is_vg_line)
        .map(|line| VolumeGroup {
            name: field(line, 3),
            size: translate_unit(&field(line, 4)),
        })
        .collect();
    let vg_lines: Vec<&str> = text.lines().filter(is_vg_line).collect();
    let mut logical_volumes = Vec::new();
    for line in text.lines().filter(|line| line.starts_with("LV ")) {
        let volume = LogicalVolume {
            vg: field(line, 2),
            name: field(line, 3),
            mount: field(line, 4),
            fs: field(line, 5),
            size: translate_unit(&field(line, 6)),
        };
        // `grep "$vg"` over the VG lines, first match's 4th field, untranslated.
        let vg_size = vg_lines
            .iter()
            .find(|vg_line| vg_line.contains(volume.vg.as_str()))
            .map(|vg_line| field(vg_line, 4))
            .unwrap_or_default();
        if volume.size != "all"
            && vg_size == "all"
            && let Some(number) = numeric(&volume.size)
        {
            parts_sum_size = parts_sum_size.saturating_add(number);
        }
        if volume.mount == "/" {
            has_root = true;
        }
        logical_volumes.push(volume);
    }
    let lvm = !volume_groups.is_empty() && !logical_volumes.is_empty();

    // `grep -P '^PART *btrfs\.\w+'`.
    let btrfs_volumes: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("PART")?.trim_start_matches(' ');
            let id = rest.strip_prefix("btrfs.")?;
            let word = id.chars().next()?;
            (word.is_alphanumeric() || word == '_').then(|| field(line, 2))
        })
        .collect();
    let mut subvolumes = Vec::new();
    for line in text.lines().filter(|line| line.starts_with("SUBVOL ")) {
        let subvolume = Subvolume {
            volume: field(line, 2),
            name: field(line, 3),
            mount: field(line, 4),
        };
        if subvolume.mount == "/" {
            has_root = true;
        }
        subvolumes.push(subvolume);
    }
    let btrfs = !btrfs_volumes.is_empty() && !subvolumes.is_empty();

    let mut bootloader = value(text, "BOOTLOADER");
    if bootloader.is_empty() {
        bootloader = DEFAULT_LOADER.into();
    }
    let mut governor = value(text, "GOVERNOR");
    if governor.is_empty() {
        governor = DEFAULT_GOVERNOR.into();
    }
    let crypt_password = text
        .lines()
        .find(|line| line.starts_with("CRYPTPASSWORD "))
        .map(|line| line.split_once(' ').map(|(_, rest)| rest).unwrap_or(""))
        .unwrap_or_default()
        .to_owned();
    Vars {
        drives,
        format_drives,
        count_drives,
        swraid,
        swraid_level,
        parts,
        parts_sum_size,
        has_root,
        crypt,
        crypt_password,
        volume_groups,
        logical_volumes,
        lvm,
        btrfs_volumes,
        subvolumes,
        btrfs,
        image: value(text, "IMAGE"),
        bootloader: bootloader.to_lowercase(),
        hostname: value(text, "HOSTNAME"),
        governor,
        force_gpt: value(text, "FORCE_GPT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys_and_first_match() {
        let text = "SWRAIDLEVEL 5\nSWRAID 1\nDRIVE10 /dev/sdj\nDRIVE1 /dev/sda\nHOSTNAME a # c\nHOSTNAME b\n  IMAGE /x.tar\n";
        assert_eq!(value(text, "SWRAID"), "5");
        assert_eq!(value(text, "DRIVE1"), "/dev/sdj");
        assert_eq!(value(text, "HOSTNAME"), "a");
        assert_eq!(value(text, "IMAGE"), "");
    }

    #[test]
    fn units() {
        assert_eq!(translate_unit("512M"), "512");
        assert_eq!(translate_unit("1024MiB"), "1024");
        assert_eq!(translate_unit("50G"), "51200");
        assert_eq!(translate_unit("2TiB"), "2097152");
        assert_eq!(translate_unit("all"), "all");
        assert_eq!(translate_unit("1.5G"), "1.5G");
        assert_eq!(translate_unit("300"), "300");
    }
}
