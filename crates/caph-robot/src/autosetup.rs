//! installimage's autosetup file: rendered from a disk layout, parsed the way installimage parses
//! it, and checked with installimage's rules before any server is touched.
//!
//! installimage reads most keys with `grep -m1 ^KEY | awk '{print $2}'`: the first matching line
//! wins, and a key matches every line that starts with it (`DRIVE1` matches `DRIVE10`, and an
//! `SWRAIDLEVEL` line before `SWRAID` is read as `SWRAID`). [`parse`] reproduces that, and
//! [`render`] writes files that mean the same under it.

use std::collections::HashMap;
use std::fmt::Write as _;

use caph_core::spec::{CryptPassword, DiskLayout, LogicalVolume, Partition, Size, validate_layout};
use caph_core::text::{Escaped, UnsafeLine, check_line, field_in};

/// Where the backend writes the autosetup file in the rescue system, for messages.
const AUTOSETUP_FILE: &str = "/autosetup";

/// The post-install marker: the post-install script's last line prints it, and the backend requires
/// it in installimage's output, because installimage ignores the script's exit code.
pub const POST_INSTALL_MARKER: &str = "CAPH_IMAGE_POST_INSTALL_FINISHED";

/// Image file extensions installimage accepts.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "tar", "tar.gz", "tar.bz", "tar.bz2", "tar.xz", "tar.zst", "tgz", "tbz", "txz",
];

/// An autosetup file, as installimage would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autosetup {
    /// The disk layout (`DRIVE`, `SWRAID`, `SWRAIDLEVEL`, `PART`, `LV`).
    pub layout: DiskLayout,
    /// Drives marked with `FORMATDRIVE<n>`, by index into `layout.drives`.
    pub format_drives: Vec<usize>,
    /// `BOOTLOADER`.
    pub bootloader: Option<String>,
    /// `HOSTNAME`.
    pub hostname: Option<String>,
    /// `IMAGE`.
    pub image: Option<String>,
    /// `GOVERNOR`.
    pub governor: Option<String>,
    /// `SUBVOL <volume> <name> <mount>` lines: btrfs subvolumes.
    pub subvolumes: Vec<Subvolume>,
    /// Whether any `PART` has a fifth field, which makes installimage encrypt (installimage's
    /// `CRYPT`, whatever the field says; [`Partition::crypt`] is set where it says `crypt`).
    pub crypt: bool,
    /// Whether a `CRYPTPASSWORD` is given (its value is in [`DiskLayout::crypt_password`]).
    pub crypt_password: bool,
}

/// A `SUBVOL` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subvolume {
    /// The btrfs volume, `btrfs.<id>` as named in its `PART` line.
    pub volume: String,
    /// The subvolume's name, such as `@home`.
    pub name: String,
    /// Where it is mounted.
    pub mount: String,
}

/// Writes an autosetup file for `layout`, booting with grub, naming the host and the image.
///
/// Refuses a value that is not one field of a line ([`caph_core::text::check_field`]), and a
/// passphrase that is not one line, since either would change what installimage reads; the
/// refusal never shows the passphrase.
pub fn render(layout: &DiskLayout, hostname: &str, image: &str) -> Result<String, UnsafeLine> {
    let field = |value: &str| field_in(AUTOSETUP_FILE, value);
    let mut rendered = String::from("# Written by caph-image.\n");
    for (index, drive) in layout.drives.iter().enumerate() {
        field(drive)?;
        let _ = writeln!(rendered, "DRIVE{} {drive}", index + 1);
    }
    // SWRAID before SWRAIDLEVEL: installimage's prefix match would read SWRAIDLEVEL as SWRAID.
    match layout.raid_level {
        Some(level) => {
            let _ = writeln!(rendered, "SWRAID 1\nSWRAIDLEVEL {level}");
        }
        None => rendered.push_str("SWRAID 0\n"),
    }
    rendered.push_str("BOOTLOADER grub\n");
    field(hostname)?;
    let _ = writeln!(rendered, "HOSTNAME {hostname}");
    if let Some(password) = &layout.crypt_password {
        // installimage reads everything after `CRYPTPASSWORD ` up to the end of the line.
        check_line(password.expose()).map_err(|problem| UnsafeLine {
            file: AUTOSETUP_FILE.to_string(),
            value: "<the CRYPTPASSWORD passphrase>".to_string(),
            problem,
        })?;
        let _ = writeln!(rendered, "CRYPTPASSWORD {}", password.expose());
    }
    for partition in &layout.partitions {
        field(&partition.mount)?;
        field(&partition.filesystem)?;
        let crypt = if partition.crypt { " crypt" } else { "" };
        let _ = writeln!(
            rendered,
            "PART {} {} {}{crypt}",
            partition.mount, partition.filesystem, partition.size
        );
    }
    for volume in &layout.volumes {
        for value in [&volume.vg, &volume.name, &volume.mount, &volume.filesystem] {
            field(value)?;
        }
        let _ = writeln!(
            rendered,
            "LV {} {} {} {} {}",
            volume.vg, volume.name, volume.mount, volume.filesystem, volume.size
        );
    }
    field(image)?;
    let _ = writeln!(rendered, "IMAGE {image}");
    Ok(rendered)
}

/// `text` with every line that holds `CRYPTPASSWORD` replaced by `CRYPTPASSWORD [FILTERED]`, as
/// installimage's own reports filter it: for messages, reports and logs.
pub fn redacted(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.contains("CRYPTPASSWORD") {
                "CRYPTPASSWORD [FILTERED]\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// A line of an autosetup file that installimage cannot make sense of, or a rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The 1-based line it concerns, when there is one.
    pub line: Option<usize>,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The first line starting with `key`, as `grep -m1 ^KEY` finds it, with its 1-based number.
fn first_line<'t>(lines: &[&'t str], key: &str) -> Option<(usize, &'t str)> {
    lines
        .iter()
        .enumerate()
        .find(|(_, line)| line.starts_with(key))
        .map(|(index, line)| (index + 1, *line))
}

/// The second whitespace-separated field, as `awk '{print $2}'` prints it.
fn second_field(line: &str) -> Option<&str> {
    line.split_whitespace().nth(1)
}

/// For `DRIVE<n>` and `FORMATDRIVE<n>`: the first line (0-based) that `grep -m1 ^DRIVE<n>`
/// finds, for every `n`, in one pass. `^DRIVE1` also matches a `DRIVE10` line, so a line is
/// the candidate of every number its leading digits start with.
fn numbered_lines(lines: &[&str], key: &str) -> HashMap<u64, usize> {
    /// u64 has at most 20 digits; a longer run names no drive anyone has.
    const MAX_DIGITS: usize = 19;
    let mut first = HashMap::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // `^DRIVE1` never matches `DRIVE01`: no number is written with a leading zero.
        if rest.starts_with('0') {
            continue;
        }
        for length in 1..=digits.min(MAX_DIGITS) {
            if let Ok(number) = rest[..length].parse::<u64>() {
                first.entry(number).or_insert(index);
            }
        }
    }
    first
}

/// Parses `text` the way installimage does; returns the problems that make lines unreadable.
/// One pass over the lines per key: linear in the size of the file.
pub fn parse(text: &str) -> Result<Autosetup, Vec<Problem>> {
    // installimage strips no comments: a `#` line matches no key, and a trailing comment is one
    // more field (after a PART's size it even asks for encryption).
    let lines: Vec<&str> = text.lines().collect();
    let mut problems = Vec::new();

    let drive_lines = numbered_lines(&lines, "DRIVE");
    let format_lines = numbered_lines(&lines, "FORMATDRIVE");
    let mut drives = Vec::new();
    let mut format_drives = Vec::new();
    for number in 1.. {
        let Some(&index) = drive_lines.get(&number) else {
            break;
        };
        drives.push(second_field(lines[index]).unwrap_or_default().to_string());
        if format_lines
            .get(&number)
            .and_then(|&index| second_field(lines[index]))
            .is_some()
        {
            format_drives.push(drives.len() - 1);
        }
    }

    let swraid =
        first_line(&lines, "SWRAID").and_then(|(number, line)| Some((number, second_field(line)?)));
    let level = first_line(&lines, "SWRAIDLEVEL")
        .and_then(|(number, line)| Some((number, second_field(line)?)));
    let raid_level = match swraid {
        Some((_, "1")) => match level {
            Some((number, text)) => match text.parse::<u8>() {
                Ok(level) => Some(level),
                Err(_) => {
                    problems.push(Problem {
                        line: Some(number),
                        message: format!(
                            "SWRAIDLEVEL \"{}\" is not a number; use 0, 1, 5, 6 or 10",
                            Escaped(text)
                        ),
                    });
                    None
                }
            },
            // installimage's default level is 1.
            None => Some(1),
        },
        Some((_, "0")) | None => None,
        Some((number, other)) => {
            problems.push(Problem {
                line: Some(number),
                message: format!(
                    "SWRAID \"{}\" must be 0 or 1 (write SWRAID before SWRAIDLEVEL)",
                    Escaped(other)
                ),
            });
            None
        }
    };

    let mut partitions = Vec::new();
    let mut volumes = Vec::new();
    let mut subvolumes = Vec::new();
    let mut crypt = false;
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            Some(&"PART") => match fields.as_slice() {
                [_, mount, filesystem, size, rest @ ..] => match Size::parse(size) {
                    Ok(size) => {
                        // installimage's CRYPT: any fifth field.
                        crypt |= !rest.is_empty();
                        partitions.push(Partition {
                            mount: mount.to_string(),
                            filesystem: filesystem.to_string(),
                            size,
                            crypt: rest.first() == Some(&"crypt"),
                        });
                    }
                    Err(why) => problems.push(Problem {
                        line: Some(number),
                        message: format!("size \"{}\" {why}", Escaped(size)),
                    }),
                },
                _ => problems.push(Problem {
                    line: Some(number),
                    message: "PART needs a mount point, a file system and a size".to_string(),
                }),
            },
            Some(&"LV") => match fields.as_slice() {
                [_, vg, name, mount, filesystem, size, ..] => match Size::parse(size) {
                    Ok(size) => volumes.push(LogicalVolume {
                        vg: vg.to_string(),
                        name: name.to_string(),
                        mount: mount.to_string(),
                        filesystem: filesystem.to_string(),
                        size,
                    }),
                    Err(why) => problems.push(Problem {
                        line: Some(number),
                        message: format!("size \"{}\" {why}", Escaped(size)),
                    }),
                },
                _ => problems.push(Problem {
                    line: Some(number),
                    message:
                        "LV needs a volume group, a name, a mount point, a file system and a size"
                            .to_string(),
                }),
            },
            Some(&"SUBVOL") => match fields.as_slice() {
                [_, volume, name, mount, ..] => subvolumes.push(Subvolume {
                    volume: volume.to_string(),
                    name: name.to_string(),
                    mount: mount.to_string(),
                }),
                _ => problems.push(Problem {
                    line: Some(number),
                    message: "SUBVOL needs a btrfs volume, a name and a mount point".to_string(),
                }),
            },
            _ => {}
        }
    }

    let value = |key: &str| {
        first_line(&lines, key)
            .and_then(|(_, line)| second_field(line))
            .map(str::to_string)
    };
    // `grep -m1 '^CRYPTPASSWORD ' | cut -d ' ' -f 2-`: the rest of the line, blanks and all.
    let crypt_password = lines
        .iter()
        .find_map(|line| line.strip_prefix("CRYPTPASSWORD "))
        .filter(|password| !password.is_empty())
        .map(CryptPassword::new);
    let autosetup = Autosetup {
        layout: DiskLayout {
            drives,
            raid_level,
            uefi: false,
            partitions,
            volumes,
            crypt_password: crypt_password.clone(),
        },
        format_drives,
        bootloader: value("BOOTLOADER"),
        hostname: value("HOSTNAME"),
        image: value("IMAGE"),
        governor: value("GOVERNOR"),
        subvolumes,
        crypt,
        crypt_password: crypt_password.is_some(),
    };
    if problems.is_empty() {
        Ok(autosetup)
    } else {
        Err(problems)
    }
}

/// What a disk layout file given to `build robot --layout` may hold: the lines the layout
/// model carries (`DRIVE<n>`, `SWRAID`, `SWRAIDLEVEL`, `PART`, `LV`, `CRYPTPASSWORD`, and
/// `BOOTLOADER grub`, which the backend writes anyway). Anything else would be dropped when the
/// autosetup file is rewritten, so it is refused with its line and key named.
pub fn parse_layout(text: &str) -> Result<DiskLayout, Vec<Problem>> {
    let mut problems = layout_line_problems(text);
    match parse(text) {
        Ok(autosetup) if problems.is_empty() => Ok(autosetup.layout),
        Ok(_) => Err(problems),
        Err(mut parse_problems) => {
            problems.append(&mut parse_problems);
            problems.sort_by_key(|problem| problem.line);
            Err(problems)
        }
    }
}

/// The lines of a layout file that the layout model would drop or read differently.
fn layout_line_problems(text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut drive_numbers = Vec::new();
    let mut problem = |line: usize, message: String| {
        problems.push(Problem {
            line: Some(line),
            message,
        })
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            problem(
                number,
                "starts with a blank, so installimage ignores it; remove the blank or the line"
                    .to_string(),
            );
            continue;
        }
        if line.contains('\t') {
            problem(
                number,
                "holds a tab; installimage finds PART and LV lines by a space after the key: use spaces".to_string(),
            );
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let key = fields[0];
        let drive_number = key
            .strip_prefix("DRIVE")
            .filter(|digits| {
                !digits.is_empty()
                    && !digits.starts_with('0')
                    && digits.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|digits| digits.parse::<u64>().ok());
        let single = match key {
            "PART" => {
                match fields.get(4) {
                    None | Some(&"crypt") if fields.len() <= 5 => {}
                    Some(&"crypt") | None => problem(
                        number,
                        format!(
                            "PART has fields after its size that installimage ignores: \"{}\"; remove them",
                            Escaped(&fields[5..].join(" "))
                        ),
                    ),
                    Some(other) => problem(
                        number,
                        format!(
                            "PART has \"{}\" after its size: installimage takes any fifth field as a request for encryption; write crypt (with CRYPTPASSWORD), or remove it",
                            Escaped(other)
                        ),
                    ),
                }
                false
            }
            "LV" => {
                if fields.len() > 6 {
                    problem(
                        number,
                        format!(
                            "LV has fields after its size that installimage ignores: \"{}\"; remove them",
                            Escaped(&fields[6..].join(" "))
                        ),
                    );
                }
                false
            }
            "SWRAID" | "SWRAIDLEVEL" | "CRYPTPASSWORD" => true,
            "BOOTLOADER" => {
                if fields
                    .get(1)
                    .is_none_or(|loader| !loader.eq_ignore_ascii_case("grub"))
                {
                    problem(
                        number,
                        "BOOTLOADER: caph-image installs with grub, the only loader installimage supports; remove the line".to_string(),
                    );
                }
                true
            }
            _ if drive_number.is_some() => {
                drive_numbers.extend(drive_number);
                true
            }
            "HOSTNAME" => {
                problem(number, "HOSTNAME is not part of a layout: the hostname comes from the spec's [robot] hostname or --hostname; remove the line".to_string());
                false
            }
            "IMAGE" => {
                problem(number, "IMAGE is not part of a layout: the image is the tarball built or given with --tarball; remove the line".to_string());
                false
            }
            other => {
                problem(
                    number,
                    format!(
                        "{} is a key caph-image does not carry into the autosetup file it writes, so installimage would never see it; remove the line",
                        Escaped(other)
                    ),
                );
                false
            }
        };
        if single && let Some(first) = seen.insert(key.to_string(), number) {
            problem(
                number,
                format!(
                    "{} is given again (first on line {first}); installimage reads only the first: remove one",
                    Escaped(key)
                ),
            );
            seen.insert(key.to_string(), first);
        }
    }
    drive_numbers.sort_unstable();
    for (position, drive) in drive_numbers.iter().enumerate() {
        let expected = position as u64 + 1;
        if *drive != expected {
            problems.push(Problem {
                line: None,
                message: format!(
                    "DRIVE{drive} without DRIVE{expected}: number the drives DRIVE1, DRIVE2, ... without gaps"
                ),
            });
            break;
        }
    }
    problems
}

/// What is known about the target machine, for the rules that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// Whether it boots by UEFI.
    pub uefi: bool,
    /// `x86_64` is false, `aarch64` is true.
    pub arm: bool,
}

/// A drive of the target machine: its device path and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Device path, such as `/dev/sda`.
    pub device: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// installimage keeps this much free per `all` partition when it checks that a layout fits.
const ALL_RESERVE_MIB: u64 = 1024;

/// Like [`validate`], plus the rules that need the machine's drives (which only the rescue
/// system can tell): every drive used exists, and the partitions fit the smallest drive (or the
/// RAID's capacity), minus 1 GiB per `all`.
pub fn validate_with_drives(text: &str, machine: Machine, drives: &[Drive]) -> Vec<Problem> {
    let mut problems = validate(text, machine);
    let Ok(autosetup) = parse(text) else {
        return problems;
    };
    let layout = &autosetup.layout;
    let size_of = |device: &str| {
        drives
            .iter()
            .find(|drive| drive.device == device)
            .map(|drive| drive.size_bytes / (1024 * 1024))
    };
    // DRIVE1 always; the others only when RAID or FORMATDRIVE makes installimage use them.
    for (index, device) in layout.drives.iter().enumerate() {
        let used =
            index == 0 || layout.raid_level.is_some() || autosetup.format_drives.contains(&index);
        if used && size_of(device).is_none() {
            problems.push(Problem {
                line: None,
                message: format!("DRIVE{} {device} is not a drive of this machine", index + 1),
            });
        }
    }
    let sizes: Vec<u64> = match layout.raid_level {
        Some(_) => layout
            .drives
            .iter()
            .filter_map(|device| size_of(device))
            .collect(),
        None => layout
            .drives
            .first()
            .and_then(|device| size_of(device))
            .into_iter()
            .collect(),
    };
    let Some(smallest) = sizes.iter().copied().min() else {
        return problems;
    };
    let count = sizes.len() as u64;
    // Saturating: a machine's capacity past u64 MiB is as good as unlimited.
    let capacity = match layout.raid_level {
        Some(0) => smallest.saturating_mul(count),
        Some(5) => smallest.saturating_mul(count.saturating_sub(1)),
        Some(6) => smallest.saturating_mul(count.saturating_sub(2)),
        Some(10) => smallest.saturating_mul(count / 2),
        _ => smallest,
    };
    // Checked: sizes from a file may add up past u64, which is more than any drive holds.
    let wanted = layout
        .partitions
        .iter()
        .map(|partition| match partition.size {
            Size::MiB(mib) => mib,
            Size::All => ALL_RESERVE_MIB,
        })
        .try_fold(0u64, u64::checked_add);
    match wanted {
        Some(wanted) if wanted <= capacity => {}
        Some(wanted) => problems.push(Problem { line: None, message: format!("the partitions need {wanted} MiB, but the drives hold {capacity} MiB; make them smaller") }),
        None => problems.push(Problem { line: None, message: format!("the partitions need more than {} MiB, but the drives hold {capacity} MiB; make them smaller", u64::MAX) }),
    }
    problems
}

/// Checks an autosetup file with installimage's rules for `machine`; returns every problem.
pub fn validate(text: &str, machine: Machine) -> Vec<Problem> {
    let mut autosetup = match parse(text) {
        Ok(autosetup) => autosetup,
        Err(problems) => return problems,
    };
    autosetup.layout.uefi = machine.uefi;
    let subvolume_mounts: Vec<&str> = autosetup
        .subvolumes
        .iter()
        .map(|subvolume| subvolume.mount.as_str())
        .collect();
    let mut problems: Vec<Problem> = validate_layout(&autosetup.layout)
        .into_iter()
        // A btrfs subvolume may provide `/`; the layout model knows partitions and volumes only.
        .filter(|problem| {
            !(problem.message == "nothing is mounted at /" && subvolume_mounts.contains(&"/"))
        })
        .map(|problem| Problem {
            line: None,
            message: match problem.help {
                Some(help) => format!("{}: {}; {help}", problem.field, problem.message),
                None => format!("{}: {}", problem.field, problem.message),
            },
        })
        .collect();
    if !autosetup.format_drives.is_empty() && autosetup.layout.raid_level.is_some() {
        problems.push(Problem {
            line: None,
            message: "FORMATDRIVE and SWRAID exclude each other; remove one".to_string(),
        });
    }
    if let Some(governor) = autosetup.governor.as_deref()
        && !matches!(governor, "powersave" | "performance" | "ondemand")
    {
        problems.push(Problem {
            line: None,
            message: format!(
                "GOVERNOR \"{governor}\" is not valid; use powersave, performance or ondemand"
            ),
        });
    }
    if autosetup.crypt && !autosetup.crypt_password {
        problems.push(Problem {
            line: None,
            message:
                "a PART has crypt, but CRYPTPASSWORD is not defined; add CRYPTPASSWORD <password>"
                    .to_string(),
        });
    }
    problems.extend(
        check_subvolumes(&autosetup)
            .into_iter()
            .map(|message| Problem {
                line: None,
                message,
            }),
    );
    // installimage lower-cases the value before comparing.
    match autosetup
        .bootloader
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("grub") | None => {}
        Some(other) => problems.push(Problem {
            line: None,
            message: format!("BOOTLOADER \"{other}\" is not supported; use grub"),
        }),
    }
    if autosetup.hostname.as_deref().is_none_or(str::is_empty) {
        problems.push(Problem {
            line: None,
            message: "HOSTNAME is missing; add HOSTNAME <name>".to_string(),
        });
    }
    match autosetup.image.as_deref() {
        None => problems.push(Problem {
            line: None,
            message: "IMAGE is missing; add IMAGE <path or URL>".to_string(),
        }),
        Some(image) => {
            problems.extend(
                check_image_name(image, machine)
                    .into_iter()
                    .map(|message| Problem {
                        line: None,
                        message,
                    }),
            );
            problems.extend(
                check_distribution_support(image, &autosetup, machine)
                    .into_iter()
                    .map(|message| Problem {
                        line: None,
                        message,
                    }),
            );
        }
    }
    problems
}

/// btrfs volumes need subvolumes, subvolumes need their volume, and mount points are absolute.
/// Sets, not scans, so that it stays linear in the number of lines.
fn check_subvolumes(autosetup: &Autosetup) -> Vec<String> {
    use std::collections::HashSet;
    let mut problems = Vec::new();
    let volumes: Vec<&str> = autosetup
        .layout
        .partitions
        .iter()
        .filter(|p| p.mount.starts_with("btrfs."))
        .map(|p| p.mount.as_str())
        .collect();
    let mut seen_volumes = HashSet::new();
    for volume in &volumes {
        if !seen_volumes.insert(*volume) {
            problems.push(format!(
                "btrfs volume {volume} is defined twice: multi-device volumes are not supported"
            ));
        }
    }
    if !volumes.is_empty() && autosetup.subvolumes.is_empty() {
        problems.push("there are btrfs volumes, but no subvolumes; add SUBVOL lines".to_string());
    }
    if volumes.is_empty() && !autosetup.subvolumes.is_empty() {
        problems.push(
            "there are btrfs subvolumes, but no btrfs volume; add a PART btrfs.<id> btrfs line"
                .to_string(),
        );
    }
    let with_subvolumes: HashSet<&str> = autosetup
        .subvolumes
        .iter()
        .map(|subvolume| subvolume.volume.as_str())
        .collect();
    if !autosetup.subvolumes.is_empty() {
        for volume in &volumes {
            if !with_subvolumes.contains(volume) {
                problems.push(format!("btrfs volume {volume} has no subvolumes"));
            }
        }
    }
    // Mount points taken so far: the partitions' and volumes', then each subvolume's in turn.
    let mut mounted: HashSet<&str> = autosetup
        .layout
        .partitions
        .iter()
        .map(|p| p.mount.as_str())
        .chain(autosetup.layout.volumes.iter().map(|v| v.mount.as_str()))
        .collect();
    for subvolume in &autosetup.subvolumes {
        if !volumes.is_empty() && !seen_volumes.contains(subvolume.volume.as_str()) {
            problems.push(format!(
                "btrfs volume {} of subvolume {} is not defined",
                subvolume.volume, subvolume.name
            ));
        }
        if !subvolume.mount.starts_with('/') {
            problems.push(format!(
                "the mount point \"{}\" of btrfs subvolume {} is not an absolute path",
                subvolume.mount, subvolume.name
            ));
        }
        if !mounted.insert(subvolume.mount.as_str()) {
            problems.push(format!("{} is mounted twice", subvolume.mount));
        }
    }
    problems
}

/// The distribution installimage reads from a file name: the first of these words found in the
/// lower-cased name wins, else Debian.
pub fn installimage_distribution(image: &str) -> &'static str {
    let lower = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .to_ascii_lowercase();
    ["suse", "centos", "ubuntu", "arch", "rocky", "alma", "rhel"]
        .into_iter()
        .find(|word| lower.contains(word))
        .unwrap_or("debian")
}

/// File systems and firmware that installimage refuses for some distributions.
fn check_distribution_support(image: &str, autosetup: &Autosetup, machine: Machine) -> Vec<String> {
    let distribution = installimage_distribution(image);
    let filesystems: Vec<&str> = autosetup
        .layout
        .partitions
        .iter()
        .map(|p| p.filesystem.as_str())
        .chain(
            autosetup
                .layout
                .volumes
                .iter()
                .map(|v| v.filesystem.as_str()),
        )
        .collect();
    let mut problems = Vec::new();
    if matches!(distribution, "rocky" | "alma" | "centos" | "rhel") {
        if filesystems.contains(&"btrfs") {
            problems.push(format!(
                "{distribution} images do not support btrfs; choose ext4 or xfs"
            ));
        }
        if filesystems.contains(&"reiserfs") {
            problems.push(format!(
                "{distribution} images do not support reiserfs; choose ext4 or xfs"
            ));
        }
    }
    if distribution == "centos" && machine.uefi {
        problems.push("installimage does not support CentOS images on UEFI machines".to_string());
    }
    problems
}

/// installimage's checks on the image's file name: extension, distribution and architecture.
pub fn check_image_name(image: &str, machine: Machine) -> Vec<String> {
    let mut problems = Vec::new();
    let file_name = image.rsplit('/').next().unwrap_or(image);
    if !IMAGE_EXTENSIONS
        .iter()
        .any(|extension| file_name.ends_with(&format!(".{extension}")))
    {
        problems.push(format!(
            "IMAGE \"{file_name}\" has an extension installimage does not take; use one of {}",
            IMAGE_EXTENSIONS.join(", ")
        ));
    }
    let lower = file_name.to_ascii_lowercase();
    let arch = ["32", "64", "i386", "amd64", "arm64"]
        .into_iter()
        .find(|arch| lower.contains(&format!("-{arch}-")));
    match arch {
        None => problems.push(format!("IMAGE \"{file_name}\": can not determine image arch from filename; name it like Ubuntu-2404-noble-amd64-flavor.tar.gz")),
        Some(arch) => {
            let fits = if machine.arm { arch == "arm64" } else { arch != "arm64" };
            if !fits {
                let machine_arch = if machine.arm { "aarch64" } else { "x86_64" };
                problems.push(format!("IMAGE \"{file_name}\" is for {arch}, but the machine is {machine_arch}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_quirks() {
        // SWRAIDLEVEL before SWRAID is read as SWRAID: "1" happens to be valid here, "5" is not.
        let text = "DRIVE1 /dev/sda\nDRIVE2 /dev/sdb\nSWRAIDLEVEL 5\nSWRAID 1\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "line 3: SWRAID \"5\" must be 0 or 1 (write SWRAID before SWRAIDLEVEL)"
        );
        // DRIVE1 matches a DRIVE10 line written first.
        let autosetup = parse("DRIVE10 /dev/sdj\nDRIVE1 /dev/sda\n").unwrap();
        assert_eq!(autosetup.layout.drives, vec!["/dev/sdj".to_string()]);
    }
}
