//! The install itself: partitions and filesystems on sparse disk images (or a directory), the extracted image, and the files installimage writes.

use std::io::Write;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::config::{Vars, numeric};
use super::validate::{image_info, image_types};
use super::{DiskMode, MachineFacts, Options};

/// The manifest a successful install leaves in `disk_dir`.
pub const MANIFEST_NAME: &str = "installed.json";

/// One partition on a disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPartition {
    /// `/dev/sda1`.
    pub device: String,
    /// The disk image holding it.
    pub image: PathBuf,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// `ext4`, `swap`, `esp`, ...
    pub fs: String,
    /// `/`, `/boot`, `swap`, `none`.
    pub mount: String,
    pub uuid: String,
    /// False where the filesystem could not be made (an ESP without `mkfs.fat`).
    pub formatted: bool,
}

/// Where the installed system lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstalledDisk {
    /// Raw disk images with real partition tables and filesystems.
    Images { partitions: Vec<InstalledPartition> },
    /// A plain directory tree, and why images were not possible.
    Directory { root: PathBuf, reason: String },
}

/// What installimage installed, for the machine that boots it next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub hostname: String,
    /// The image file name as given in `IMAGE`.
    pub image: String,
    pub disk: InstalledDisk,
    /// The partitions installimage encrypted (`crypt` after a `PART`'s size).
    #[serde(default)]
    pub encrypted: Vec<EncryptedPartition>,
}

/// A partition installimage formatted as a LUKS container (`cryptsetup luksFormat` with
/// `CRYPTPASSWORD`). Nothing here runs cryptsetup, so the container is a stand-in: like a LUKS
/// header, it keeps no passphrase, only a salted digest that [`EncryptedPartition::opens_with`]
/// checks (a real key slot holds a PBKDF2 or Argon2 derivation instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedPartition {
    /// Where the opened container is mounted.
    pub mount: String,
    /// The container's UUID (`luks-<uuid>` is its mapper name, as installimage names it).
    pub uuid: String,
    /// Hex salt of the digest.
    pub salt: String,
    /// Hex sha256 of the salt and the passphrase.
    pub passphrase_sha256: String,
}

impl EncryptedPartition {
    fn new(mount: &str, uuid: &str, passphrase: &str) -> EncryptedPartition {
        let salt = hex::encode(rand::random::<[u8; 16]>());
        EncryptedPartition {
            mount: mount.to_owned(),
            uuid: uuid.to_owned(),
            passphrase_sha256: salted_digest(&salt, passphrase),
            salt,
        }
    }

    /// Whether `passphrase` opens the container.
    pub fn opens_with(&self, passphrase: &str) -> bool {
        salted_digest(&self.salt, passphrase) == self.passphrase_sha256
    }
}

fn salted_digest(salt: &str, passphrase: &str) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(passphrase.as_bytes());
    hex::encode(hasher.finalize())
}

/// `/root/debug.txt`, in installimage's `[HH:MM:SS] text` format.
pub(crate) struct DebugLog {
    file: Option<std::fs::File>,
}

impl DebugLog {
    pub(crate) fn open(path: &Path) -> DebugLog {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        DebugLog {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok(),
        }
    }

    fn stamp() -> String {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0)
            % 86_400;
        format!(
            "[{:02}:{:02}:{:02}]",
            seconds / 3600,
            (seconds % 3600) / 60,
            seconds % 60
        )
    }

    /// `debug "text"`.
    pub(crate) fn line(&mut self, text: &str) {
        if let Some(file) = &mut self.file {
            let _ = writeln!(file, "{} {text}", DebugLog::stamp());
        }
    }

    /// `echo text | debugoutput`: one entry per line.
    pub(crate) fn output(&mut self, text: &str) {
        if let Some(file) = &mut self.file {
            for line in text.lines() {
                let _ = writeln!(file, "{} :   {}", DebugLog::stamp(), line.trim_start());
            }
        }
    }
}

/// Status lines as installimage prints them.
struct Status<'o> {
    out: &'o mut dyn Write,
    step: u32,
    total: u32,
}

impl Status<'_> {
    fn step(&mut self, text: &str) {
        self.step += 1;
        let _ = writeln!(
            self.out,
            "{:>4}/{:<3}:  {text:<46} done",
            self.step, self.total
        );
    }

    fn step_open(&mut self, text: &str) {
        self.step += 1;
        let _ = writeln!(self.out, "{:>4}/{:<3}:  {text}", self.step, self.total);
    }

    fn sub(&mut self, text: &str) {
        let _ = writeln!(self.out, "         :  {text:<46} done");
    }
}

/// Runs a command; `Err` carries its stderr.
fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("ERROR: {what}: cannot run: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "ERROR: {what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(name).is_file())
}

/// `/dev/sda` + 1 -> `/dev/sda1`; `/dev/nvme0n1` + 1 -> `/dev/nvme0n1p1`.
fn partition_device(drive: &str, number: usize) -> String {
    if drive.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{drive}p{number}")
    } else {
        format!("{drive}{number}")
    }
}

/// Why this layout cannot be built on raw images, if it cannot.
fn directory_reason(vars: &Vars, options: &Options) -> Option<String> {
    if options.disk_mode == DiskMode::Directory {
        return Some("directory mode requested".into());
    }
    if vars.swraid == "1" {
        return Some("software RAID is not modelled on disk images".into());
    }
    if vars.lvm {
        return Some("LVM is not modelled on disk images".into());
    }
    if vars.crypt {
        return Some("encryption is not modelled on disk images".into());
    }
    if let Some(part) = vars.parts.iter().find(|part| {
        !matches!(
            part.fs.as_str(),
            "ext2" | "ext3" | "ext4" | "swap" | "esp" | "none"
        ) && !part.fs.starts_with("bios_grub")
    }) {
        return Some(format!(
            "{} filesystems are not modelled on disk images",
            part.fs
        ));
    }
    for tool in ["sfdisk", "mke2fs"] {
        if !tool_exists(tool) {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

fn use_gpt(vars: &Vars, facts: &MachineFacts, drive_bytes: u64) -> bool {
    // installimage switches to GPT at 2 TiB, where MS-DOS tables end.
    const GPT_FROM_BYTES: u64 = 2 << 40;
    facts.uefi || drive_bytes >= GPT_FROM_BYTES || matches!(vars.force_gpt.as_str(), "1" | "2")
}

/// The tar decompression flag for installimage's file types.
fn tar_flag(file_type: &str) -> Option<&'static str> {
    match file_type {
        "tgz" => Some("-z"),
        "tbz" => Some("-j"),
        "txz" => Some("-J"),
        "zst" => Some("--zstd"),
        _ => None,
    }
}

/// Runs `argv` chrooted into `root`, in its own mount and PID namespaces with `/proc`, `/dev` and
/// `/sys` mounted (as installimage's `execute_chroot_command` does); returns exit status, stdout
/// and stderr. The mounts vanish with the namespace.
fn chroot_command(root: &Path, argv: &[&str]) -> Result<(i32, String, String), String> {
    const SCRIPT: &str = r#"root=$1; shift
mount --make-rprivate / 2>/dev/null
mkdir -p "$root/proc" "$root/dev" "$root/sys"
mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 125
mount -t sysfs -o ro sysfs "$root/sys" 2>/dev/null
exec chroot "$root" "$@""#;
    let output = Command::new("unshare")
        .args([
            "--mount",
            // Inside a chroot (a simulated rescue system) `/` is no mount point, so unshare's
            // default `--propagation private` fails; the script makes it private where it can.
            "--propagation",
            "unchanged",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(root)
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("ERROR: cannot run unshare for a chroot: {error}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

struct PlannedPartition {
    number: usize,
    mount: String,
    fs: String,
    size_mib: Option<u64>,
    uuid: String,
    /// The LUKS container's UUID, for a partition installimage encrypts.
    luks: Option<String>,
}

pub(crate) fn install(
    vars: &Vars,
    facts: &MachineFacts,
    options: &Options,
    config_text: &str,
    log: &mut DebugLog,
    out: &mut dyn Write,
) -> Result<Manifest, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("ERROR: installimage must run as root (the simulation extracts with numeric owners and chroots)".into());
    }
    let (path_type, file_name, file_type) = image_types(&vars.image);
    let info = image_info(&file_name);
    let disk_dir = &facts.disk_dir;
    let reason = directory_reason(vars, options);
    let drive1 = vars.drives.first().cloned().flatten().unwrap_or_default();
    let drive1_bytes = facts
        .drives
        .iter()
        .find(|drive| drive.device == drive1)
        .map(|drive| drive.size_bytes)
        .unwrap_or(0);

    let _ = writeln!(out);
    let _ = writeln!(out, "                Hetzner Online GmbH - installimage");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  Your server will be installed now, this will take some minutes"
    );
    let _ = writeln!(
        out,
        "             You can abort at any time with CTRL+C ..."
    );
    let _ = writeln!(out);
    let mode_line = match &reason {
        None => format!("caph-sim: disk images in {}", disk_dir.display()),
        Some(reason) => format!(
            "caph-sim: a directory ({}) instead of disk images: {reason}",
            disk_dir.join("root").display()
        ),
    };
    let _ = writeln!(out, "{mode_line}");
    log.line(&mode_line);
    let _ = writeln!(
        out,
        "         :  Reading configuration                          done"
    );
    let _ = writeln!(
        out,
        "         :  Loading image file variables                   done"
    );
    let _ = writeln!(
        out,
        "         :  Loading {:<38} done",
        format!("{} specific functions", info.distro)
    );
    let mut total = 15;
    if path_type == "http" {
        total += 1;
    }
    if vars.swraid == "1" {
        total += 1;
    }
    if vars.lvm {
        total += 1;
    }
    if vars.crypt {
        total += 1;
    }
    let mut status = Status {
        out,
        step: 0,
        total,
    };

    // A fresh disk: whatever an earlier install left is gone.
    std::fs::create_dir_all(disk_dir)
        .map_err(|error| format!("ERROR: creating {}: {error}", disk_dir.display()))?;
    let root_dir = disk_dir.join("root");
    let work_dir = disk_dir.join("work");
    for old in [&root_dir, &work_dir] {
        if old.exists() {
            run(
                Command::new("rm").arg("-rf").arg(old),
                "wiping the old disk contents",
            )?;
        }
    }
    let _ = std::fs::remove_file(disk_dir.join(super::MANIFEST_NAME));
    status.step("Deleting partitions");
    status.step("Test partition size");

    let planned: Vec<PlannedPartition> = vars
        .parts
        .iter()
        .enumerate()
        .map(|(index, part)| PlannedPartition {
            number: index + 1,
            mount: part.mount.clone(),
            fs: part.fs.clone(),
            size_mib: numeric(&part.size),
            // FAT has a 32-bit volume id, written XXXX-XXXX where fstab names it.
            uuid: if part.fs == "esp" {
                let id = caph_boot::install::random_uuid()
                    .replace('-', "")
                    .to_uppercase();
                format!("{}-{}", &id[..4], &id[4..8])
            } else {
                caph_boot::install::random_uuid()
            },
            // installimage marks the fstab entries of part lines that hold "crypt" (its
            // `grep crypt`), and encrypts those.
            luks: part
                .crypt
                .contains("crypt")
                .then(caph_boot::install::random_uuid),
        })
        .collect();
    let image_path = disk_dir.join(format!(
        "{}.img",
        drive1.rsplit('/').next().unwrap_or("drive")
    ));
    let stage = if reason.is_none() {
        work_dir.join("stage")
    } else {
        root_dir.clone()
    };
    let mut sectors: Vec<(u64, u64)> = Vec::new();
    if reason.is_none() {
        let gpt = use_gpt(vars, facts, drive1_bytes);
        if !gpt && planned.len() > 4 {
            return Err("ERROR: more than 4 partitions on an MS-DOS table are not simulated; set FORCE_GPT 1".into());
        }
        // Emptied in place rather than replaced: a rescue system may show this file as its
        // drive through a loop device, which follows the file, not the name.
        let file = std::fs::File::create(&image_path)
            .map_err(|error| format!("ERROR: creating {}: {error}", image_path.display()))?;
        file.set_len(drive1_bytes)
            .map_err(|error| format!("ERROR: sizing {}: {error}", image_path.display()))?;
        drop(file);
        let mut script = format!("label: {}\n", if gpt { "gpt" } else { "dos" });
        for part in &planned {
            let kind = match (part.fs.as_str(), gpt) {
                ("swap", true) => "S",
                ("swap", false) => "82",
                ("esp", true) => "U",
                ("esp", false) => "ef",
                (fs, true) if fs.starts_with("bios_grub") => "21686148-6449-6E6F-744E-656564454649",
                (_, true) => "L",
                (_, false) => "83",
            };
            match part.size_mib {
                Some(size) => script.push_str(&format!("size={size}MiB, type={kind}\n")),
                None => script.push_str(&format!("type={kind}\n")),
            }
        }
        log.output(&format!("sfdisk script:\n{script}"));
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&image_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("ERROR: cannot run sfdisk: {error}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|error| format!("ERROR: sfdisk: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "ERROR: creating partitions failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let json = run(
            Command::new("sfdisk").arg("--json").arg(&image_path),
            "reading the partition table",
        )?;
        let table: serde_json::Value = serde_json::from_str(&json)
            .map_err(|error| format!("ERROR: sfdisk --json: {error}"))?;
        let sector_size = table["partitiontable"]["sectorsize"]
            .as_u64()
            .unwrap_or(512);
        for entry in table["partitiontable"]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let start = entry["start"].as_u64().unwrap_or(0) * sector_size;
            let size = entry["size"].as_u64().unwrap_or(0) * sector_size;
            sectors.push((start, size));
        }
        if sectors.len() != planned.len() {
            return Err(format!(
                "ERROR: sfdisk made {} partitions, {} were asked for",
                sectors.len(),
                planned.len()
            ));
        }
    }
    let fstab = render_fstab(vars, &planned, &drive1);
    status.step("Creating partitions and /etc/fstab");
    if vars.swraid == "1" {
        status.step(&format!(
            "Creating software RAID level {}",
            vars.swraid_level
        ));
    }
    if vars.lvm {
        status.step("Creating LVM volumes");
    }
    let encrypted: Vec<EncryptedPartition> = planned
        .iter()
        .filter_map(|part| {
            let uuid = part.luks.as_deref()?;
            Some(EncryptedPartition::new(
                &part.mount,
                uuid,
                &vars.crypt_password,
            ))
        })
        .collect();
    status.step_open("Formatting partitions");
    for part in &planned {
        if !matches!(part.fs.as_str(), "none") && !part.fs.starts_with("bios_grub") {
            let device = partition_device(&drive1, part.number);
            status.sub(&format!("  formatting {device} with {}", part.fs));
        }
    }
    status.step("Mounting partitions");
    status.step("Sync time via ntp");

    // The image: local below the system root, or downloaded next to the disks.
    let image_file = match path_type.as_str() {
        "local" => options.system_root.join(vars.image.trim_start_matches('/')),
        "http" => {
            let target = disk_dir.join(&file_name);
            run(
                Command::new("curl")
                    .args(["-fsSL", "-o"])
                    .arg(&target)
                    .arg(&vars.image),
                &format!("downloading {}", vars.image),
            )?;
            status.step(&format!("Downloading image ({path_type})"));
            target
        }
        _ => {
            return Err(format!(
                "ERROR: nfs images ({}) are not simulated; copy the image to the rescue system",
                vars.image
            ));
        }
    };
    if !image_file.is_file() {
        return Err(format!("ERROR: image file {} not found", vars.image));
    }
    status.sub("Importing public key for image validation");
    let signature = PathBuf::from(format!("{}.sig", image_file.display()));
    if path_type == "http" {
        // installimage fetches `URL.sig` beside the image; a missing one is only a warning.
        let _ = Command::new("curl")
            .args(["-fsSL", "-o"])
            .arg(&signature)
            .arg(format!("{}.sig", vars.image))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if signature.exists() {
        log.line(
            "# caph-sim: a detached signature exists; it is not checked against Hetzner's keys",
        );
        status.step("Validating image before starting extraction");
    } else {
        status.step += 1;
        let step = status.step;
        let total = status.total;
        let _ = writeln!(
            status.out,
            "{step:>4}/{total:<3}:  {:<46} warn",
            "Validating image before starting extraction"
        );
        let _ = writeln!(status.out, "         :  No detached signature file found!");
    }

    std::fs::create_dir_all(&stage)
        .map_err(|error| format!("ERROR: creating {}: {error}", stage.display()))?;
    let mut tar = Command::new("tar");
    tar.arg("-x");
    if let Some(flag) = tar_flag(&file_type) {
        tar.arg(flag);
    }
    tar.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=security.capability",
        "--exclude",
        "sys",
        "--exclude",
        "proc",
        "--exclude",
        "dev",
        "-f",
    ])
    .arg(&image_file)
    .arg("-C")
    .arg(&stage);
    run(&mut tar, "extracting the image")?;
    for dir in ["dev", "proc", "sys"] {
        let _ = std::fs::create_dir_all(stage.join(dir));
    }
    status.step(&format!("Extracting image ({path_type})"));

    // The root directory must stay root-owned 0755 (sshd's chroot rule, and what mkfs gives).
    let _ = std::fs::set_permissions(&stage, std::fs::Permissions::from_mode(0o755));
    write(&stage.join("etc/fstab"), &fstab)?;
    if vars.crypt {
        // installimage's encrypt_partitions: one crypttab line per container, and the
        // dm-crypt module for Ubuntu's initramfs.
        let crypttab: String = encrypted
            .iter()
            .map(|partition| format!("luks-{0} UUID={0} none luks\n", partition.uuid))
            .collect();
        write(&stage.join("etc/crypttab"), &crypttab)?;
        if info.distro == "ubuntu" {
            let modules = stage.join("etc/modules");
            let mut text = std::fs::read_to_string(&modules).unwrap_or_default();
            text.push_str("dm-crypt\n");
            write(&modules, &text)?;
        }
        status.step("Encrypt partitions and create /etc/crypttab");
    }

    let network = caph_boot::installimage::network_config(&info.distro, &facts.network());
    write(&stage.join(network.0), &network.1)?;
    if info.distro == "ubuntu" {
        let (code, _, stderr) = chroot_command(&stage, &["netplan", "generate"])?;
        if code != 0 || !stderr.trim().is_empty() {
            return Err(format!(
                "ERROR: netplan generate failed in the new system (exit {code}): {}",
                stderr.trim()
            ));
        }
    }
    status.step("Setting up network config");

    let (code, _, stderr) = chroot_command(&stage, &["/usr/bin/env", "true"])?;
    if code != 0 {
        return Err(format!(
            "ERROR: the new system cannot run /usr/bin/env true in a container (exit {code}): {}",
            stderr.trim()
        ));
    }
    status.step_open("Executing additional commands");
    write(&stage.join("etc/hostname"), &format!("{}\n", vars.hostname))?;
    write(
        &stage.join("etc/hosts"),
        &caph_boot::installimage::hosts(&vars.hostname, &facts.network()),
    )?;
    // A machine-id of this install's own, where the image has the file: Hetzner's rescue system
    // is booted by systemd, so installimage runs `systemd-machine-id-setup --root` (functions.sh,
    // `set_hostname`), and copies it to D-Bus's place where that directory exists.
    if stage.join("etc/machine-id").exists() {
        let machine_id = format!("{:032x}\n", rand::random::<u128>());
        write(&stage.join("etc/machine-id"), &machine_id)?;
        let _ = std::fs::remove_file(stage.join("var/lib/dbus/machine-id"));
        if stage.join("var/lib/dbus").is_dir() {
            write(&stage.join("var/lib/dbus/machine-id"), &machine_id)?;
        }
    }
    status.sub("  Setting hostname");
    if stage.join("etc/ssh").is_dir() {
        regenerate_host_keys(&stage, log)?;
        status.sub("  Generating new SSH keys");
    }
    if vars.swraid == "1" {
        if !stage.join("sbin/mdadm").exists() && !stage.join("usr/sbin/mdadm").exists() {
            return Err("ERROR: mdadm is not installed in the image, but SWRAID is on".into());
        }
        write(
            &stage.join("etc/mdadm/mdadm.conf"),
            "# mdadm.conf written by installimage (caph-sim: arrays are not modelled)\nHOMEHOST <system>\nMAILADDR root\n",
        )?;
        status.sub("  Generating mdadm config");
    }
    let kernel_present = std::fs::read_dir(stage.join("boot"))
        .map(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false);
    if !kernel_present {
        return Err(
            "ERROR: no kernel (/boot/vmlinuz-*) in the image: generating the ramdisk failed".into(),
        );
    }
    if !stage.join("usr/sbin/update-initramfs").exists() {
        return Err(
            "ERROR: update-initramfs not found in the image (install initramfs-tools)".into(),
        );
    }
    log.line(
        "# caph-sim: update-initramfs is present; not run (no kernel boots in the simulation)",
    );
    status.sub("  Generating ramdisk");
    status.step("Setting up miscellaneous files");

    status.step_open("Configuring authentication");
    // The activation's keys, where the rescue system keeps them for installimage.
    let rescue_keys = options.system_root.join("root/.ssh/robot_user_keys");
    if let Ok(keys) = std::fs::read_to_string(&rescue_keys) {
        let ssh_dir = stage.join("root/.ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|error| format!("ERROR: creating /root/.ssh: {error}"))?;
        let _ = std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700));
        // Appended, as installimage does: keys the image brings stay.
        let authorized = ssh_dir.join("authorized_keys");
        let mut all = std::fs::read_to_string(&authorized).unwrap_or_default();
        all.push_str(&keys);
        write(&authorized, &all)?;
        let _ = std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o600));
        status.sub("  Fetching SSH keys");
        // The root password is locked: keys are the only way in.
        let shadow = stage.join("etc/shadow");
        if let Ok(text) = std::fs::read_to_string(&shadow) {
            let locked: String = text
                .lines()
                .map(|line| match line.split_once(':') {
                    Some(("root", rest)) => match rest.split_once(':') {
                        Some((_, after)) => format!("root:*:{after}\n"),
                        None => format!("{line}\n"),
                    },
                    _ => format!("{line}\n"),
                })
                .collect();
            write(&shadow, &locked)?;
        }
        status.sub("  Disabling root password");
        let sshd_config = stage.join("etc/ssh/sshd_config");
        if let Ok(text) = std::fs::read_to_string(&sshd_config) {
            write(&sshd_config, &permit_root_login(&text, "without-password"))?;
        }
        status.sub("  Disabling SSH root login with password");
        status.sub("  Copying SSH keys");
    }
    let grub = ["usr/sbin/grub-install", "sbin/grub-install"]
        .iter()
        .any(|path| stage.join(path).exists());
    if !grub {
        return Err(
            "ERROR: grub-install not found in the image (install grub-pc or grub-efi)".into(),
        );
    }
    log.line("# caph-sim: grub-install is present; not run (no firmware boots in the simulation)");
    status.step(&format!("Installing bootloader {}", vars.bootloader));
    status.step(&format!("Running some {} specific functions", info.distro));
    status.step("Clearing log files");

    // Hetzner's resolvers, as installimage writes them (a symlink in the image is replaced).
    write(
        &stage.join("etc/resolv.conf"),
        &caph_boot::installimage::resolv_conf(),
    )?;
    if stage.join("etc/sysctl.d").is_dir() {
        write(
            &stage.join(caph_boot::installimage::SYSCTL_PATH),
            caph_boot::installimage::SYSCTL,
        )?;
    }
    if let Some(script) = &options.post_install {
        let _ = writeln!(status.out, "         :  Executing post installation script");
        let target = stage.join("post-install");
        std::fs::copy(script, &target)
            .map_err(|error| format!("ERROR: copying the post-install script: {error}"))?;
        let executable = std::fs::metadata(&target)
            .map(|meta| meta.mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            log.line("# Found post-installation script /post-install; executing it...");
            let (code, stdout, stderr) = chroot_command(&stage, &["/post-install"])?;
            for line in stdout.lines().chain(stderr.lines()) {
                let _ = writeln!(status.out, "{line}");
            }
            log.output(&stdout);
            log.output(&stderr);
            if code != 0 {
                // installimage logs the failure and carries on: the exit code is ignored.
                log.line(&format!(
                    "# Post-installation script didn't exit successfully (exit code = {code})"
                ));
            }
        } else {
            log.line("# Found post-installation script /post-install, but it isn't executable");
        }
    }
    let saved_config: String = config_text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    write(
        &stage.join("installimage.conf"),
        &format!(
            "#\n# Hetzner Online GmbH - installimage\n#\n# This file contains the configuration used to install this\n# system via installimage script. Comments have been removed.\n#\n\n{saved_config}"
        ),
    )?;
    // As installimage does: the debug log goes along, readable by root only.
    if let Ok(debug) = std::fs::read_to_string(options.system_root.join("root/debug.txt")) {
        let target = stage.join("installimage.debug");
        write(&target, &debug)?;
        let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640));
    }
    let _ = std::fs::set_permissions(
        stage.join("installimage.conf"),
        std::fs::Permissions::from_mode(0o640),
    );

    let disk = if reason.is_none() {
        let partitions = make_filesystems(
            &planned,
            &sectors,
            &stage,
            &image_path,
            &drive1,
            &work_dir,
            log,
        )?;
        run(
            Command::new("rm").arg("-rf").arg(&work_dir),
            "removing the staging tree",
        )?;
        InstalledDisk::Images { partitions }
    } else {
        InstalledDisk::Directory {
            root: root_dir.clone(),
            reason: reason.clone().unwrap_or_default(),
        }
    };
    let manifest = Manifest {
        hostname: vars.hostname.clone(),
        image: file_name.clone(),
        disk,
        encrypted,
    };
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|error| format!("ERROR: writing the manifest: {error}"))?;
    write(&disk_dir.join(super::MANIFEST_NAME), &json)?;
    let _ = writeln!(status.out);
    let _ = writeln!(status.out, "                  INSTALLATION COMPLETE");
    let _ = writeln!(
        status.out,
        "   You can now reboot and log in to your new system with the"
    );
    let _ = writeln!(
        status.out,
        " same credentials that you used to log into the rescue system."
    );
    let _ = writeln!(status.out);
    log.line("# installation complete");
    Ok(manifest)
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("ERROR: creating {}: {error}", parent.display()))?;
    }
    // A symlink in the image (resolv.conf, hostname) must not redirect the write to the host.
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        let _ = std::fs::remove_file(path);
    }
    std::fs::write(path, content)
        .map_err(|error| format!("ERROR: writing {}: {error}", path.display()))
}

fn render_fstab(vars: &Vars, planned: &[PlannedPartition], drive1: &str) -> String {
    let mut fstab = String::from("proc /proc proc defaults 0 0\n");
    for (index, part) in planned.iter().enumerate() {
        let device = if vars.swraid == "1" {
            format!("/dev/md/{index}")
        } else {
            partition_device(drive1, part.number)
        };
        let source = format!("UUID={}", part.uuid);
        if let Some(luks) = &part.luks {
            // make_fstab_entry's crypted entry, its device then swapped for the mapper's.
            if !matches!(part.mount.as_str(), "lvm" | "none" | "swap") {
                fstab.push_str(&format!(
                    "/dev/mapper/luks-{luks} {} {} defaults 0 0 # crypted\n",
                    part.mount, part.fs
                ));
            }
            continue;
        }
        match (part.mount.as_str(), part.fs.as_str()) {
            (_, "swap") => fstab.push_str(&format!("# {device}\n{source} none swap sw 0 0\n")),
            ("lvm" | "none", _) => {}
            (mount, _) if mount.starts_with("btrfs.") => {}
            (mount, "esp") => fstab.push_str(&format!(
                "# {device}\n{source} {mount} vfat umask=0077 0 1\n"
            )),
            (mount, fs) => {
                fstab.push_str(&format!("# {device}\n{source} {mount} {fs} defaults 0 0\n"))
            }
        }
    }
    for volume in &vars.logical_volumes {
        let device = format!("/dev/{}/{}", volume.vg, volume.name);
        if volume.fs == "swap" {
            fstab.push_str(&format!("{device} none swap sw 0 0\n"));
        } else if volume.mount != "none" {
            fstab.push_str(&format!(
                "{device} {} {} defaults 0 0\n",
                volume.mount, volume.fs
            ));
        }
    }
    for subvolume in &vars.subvolumes {
        fstab.push_str(&format!(
            "# btrfs subvolume {} of {}\nLABEL={} {} btrfs defaults,subvol={} 0 0\n",
            subvolume.name, subvolume.volume, subvolume.volume, subvolume.mount, subvolume.name
        ));
    }
    fstab
}

/// installimage's `set_ssh_rootlogin`: every unindented line whose text after its first `#` is
/// two words and names `PermitRootLogin` becomes `PermitRootLogin <permit>`; everything else
/// stays as it is.
fn permit_root_login(sshd_config: &str, permit: &str) -> String {
    let mut out = String::with_capacity(sshd_config.len());
    for line in sshd_config.lines() {
        let indentation = match line.find('#') {
            Some(hash) => hash,
            None => line.find('P').unwrap_or(0),
        };
        let after_hash = match line.split_once('#') {
            Some((_, rest)) => rest,
            None => line,
        };
        if line.contains("PermitRootLogin")
            && indentation == 0
            && after_hash.split_whitespace().count() == 2
        {
            out.push_str(&format!("PermitRootLogin {permit}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// installimage's `generate_new_sshkeys`: for each key type whose private key file exists in the
/// image, its files are removed and a new key of that type is made in a chroot of the new
/// system; a type without a file is skipped ("skipping ed25519 key gen"). An image with no host
/// keys therefore comes up with none, as with the real program.
fn regenerate_host_keys(stage: &Path, log: &mut DebugLog) -> Result<(), String> {
    let ssh_dir = stage.join("etc/ssh");
    for (key_type, file, prefix) in caph_boot::installimage::HOST_KEY_TYPES {
        if !ssh_dir.join(file).is_file() {
            log.line(&format!("skipping {key_type} key gen"));
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&ssh_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let path = format!("/etc/ssh/{file}");
        let mut argv = vec!["ssh-keygen", "-t", key_type];
        if *key_type == "rsa1" {
            argv.extend(["-b", "1024"]);
        }
        argv.extend(["-f", &path, "-N", "", "-q"]);
        let (code, _, stderr) = chroot_command(stage, &argv)?;
        if code != 0 {
            return Err(format!(
                "ERROR: generating new SSH host keys in the new system failed (exit {code}): {}",
                stderr.trim()
            ));
        }
    }
    Ok(())
}

/// Splits the staged tree by mount point (deepest first) and makes each partition's filesystem
/// at its offset in the disk image.
fn make_filesystems(
    planned: &[PlannedPartition],
    sectors: &[(u64, u64)],
    stage: &Path,
    image: &Path,
    drive: &str,
    work_dir: &Path,
    log: &mut DebugLog,
) -> Result<Vec<InstalledPartition>, String> {
    let mut contents: Vec<Option<PathBuf>> = vec![None; planned.len()];
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|index| planned[*index].mount.starts_with('/'))
        .collect();
    order.sort_by_key(|index| {
        std::cmp::Reverse(
            planned[*index].mount.matches('/').count() + usize::from(planned[*index].mount != "/"),
        )
    });
    for index in order {
        let part = &planned[index];
        if part.mount == "/" {
            contents[index] = Some(stage.to_owned());
            continue;
        }
        let source = stage.join(part.mount.trim_start_matches('/'));
        let moved = work_dir.join(format!("part{}", part.number));
        if source.is_dir() {
            let meta = std::fs::metadata(&source)
                .map_err(|error| format!("ERROR: {}: {error}", source.display()))?;
            std::fs::rename(&source, &moved)
                .map_err(|error| format!("ERROR: moving {}: {error}", source.display()))?;
            std::fs::create_dir(&source)
                .map_err(|error| format!("ERROR: creating {}: {error}", source.display()))?;
            let _ = std::fs::set_permissions(&source, meta.permissions());
            let _ = rustix::fs::chown(
                &source,
                Some(rustix::fs::Uid::from_raw(meta.uid())),
                Some(rustix::fs::Gid::from_raw(meta.gid())),
            );
        } else {
            std::fs::create_dir_all(&moved)
                .map_err(|error| format!("ERROR: creating {}: {error}", moved.display()))?;
            std::fs::create_dir_all(&source)
                .map_err(|error| format!("ERROR: creating {}: {error}", source.display()))?;
        }
        contents[index] = Some(moved);
    }

    let mut installed = Vec::new();
    for (index, part) in planned.iter().enumerate() {
        let (start, size) = sectors[index];
        let mut formatted = true;
        match part.fs.as_str() {
            "ext2" | "ext3" | "ext4" => {
                let mut command = Command::new("mke2fs");
                command
                    .args(["-q", "-F", "-t", &part.fs, "-U", &part.uuid])
                    .arg("-E")
                    .arg(format!("offset={start}"));
                if let Some(dir) = &contents[index] {
                    command.arg("-d").arg(dir);
                }
                command.arg(image).arg(format!("{}k", size / 1024));
                run(
                    &mut command,
                    &format!("formatting {} with {}", part.mount, part.fs),
                )?;
            }
            "swap" => {
                let scratch = work_dir.join(format!("swap{}", part.number));
                let file = std::fs::File::create(&scratch)
                    .map_err(|error| format!("ERROR: {}: {error}", scratch.display()))?;
                file.set_len(size)
                    .map_err(|error| format!("ERROR: {error}"))?;
                drop(file);
                run(
                    Command::new("mkswap")
                        .args(["-U", &part.uuid])
                        .arg(&scratch),
                    "making swap",
                )?;
                // The swap signature lives in the first page.
                let header = std::fs::read(&scratch)
                    .map(|bytes| bytes[..bytes.len().min(4096)].to_vec())
                    .map_err(|error| format!("ERROR: {error}"))?;
                write_at(image, start, &header)?;
                let _ = std::fs::remove_file(&scratch);
            }
            "esp" => {
                if tool_exists("mkfs.fat") {
                    let volume_id = part.uuid.replace('-', "");
                    run(
                        Command::new("mkfs.fat")
                            .args(["-F", "32", "-i", &volume_id, "--offset"])
                            .arg((start / 512).to_string())
                            .arg(image)
                            .arg((size / 1024).to_string()),
                        "formatting the ESP",
                    )?;
                } else {
                    formatted = false;
                    log.line(
                        "# caph-sim: mkfs.fat (dosfstools) is missing: the ESP is left unformatted",
                    );
                }
            }
            _ => formatted = false,
        }
        installed.push(InstalledPartition {
            device: partition_device(drive, part.number),
            image: image.to_owned(),
            start_bytes: start,
            size_bytes: size,
            fs: part.fs.clone(),
            mount: part.mount.clone(),
            uuid: part.uuid.clone(),
            formatted,
        });
    }
    Ok(installed)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| format!("ERROR: {}: {error}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(bytes))
        .map_err(|error| format!("ERROR: {}: {error}", path.display()))
}
