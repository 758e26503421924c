//! A simulated Hetzner installimage: the real config quirks and validation rules, and an install of a rootfs tarball onto disk images or a directory.
//!
//! It behaves like `installimage -a -c /autosetup [-x /root/post-install.sh]` for everything a
//! client relies on (section 3 of `shared/reference/robot-and-installimage.md`):
//!
//! - the config is read with `grep -m1 ^KEY | awk '{print $2}'` semantics ([`validate`] keeps
//!   the prefix-key and first-match quirks);
//! - every check of installimage's `validate_vars`, in its order, with its wording; as in batch
//!   mode, a rejection is written to `/root/debug.txt` (`[HH:MM:SS] :   ERROR: ...`), the
//!   terminal shows `Cancelled.`, and the exit code is 1;
//! - after validation the 20-second "Press X to continue immediately" wait, cut short by an `x`
//!   on stdin (`echo x | installimage ...`);
//! - the install: as root, a sparse raw image per drive partitioned with `sfdisk` and ext2/3/4
//!   filesystems made with `mke2fs -d` from the extracted tree (no mounting, no loop device), or
//!   a plain directory where that cannot model the layout (software RAID, LVM, btrfs, xfs,
//!   encryption): the output says which; extraction with
//!   `tar -x --numeric-owner --xattrs --xattrs-include=security.capability --exclude sys --exclude proc --exclude dev`;
//!   `/etc/fstab`, hostname, hosts, an empty machine-id, new SSH host keys of the types
//!   whose files the image already holds, as the real `generate_new_sshkeys` does (`ssh-keygen -t
//!   TYPE` in the new system; an image without host keys gets none), network config
//!   (netplan for Ubuntu-named images, `/etc/network/interfaces` otherwise), the rescue's
//!   `authorized_keys` for root; the post-install script run in a chroot of the new system with
//!   its exit code ignored; `INSTALLATION COMPLETE` at the end.
//!
//! `/autosetup` is moved to `/autosetup.bak-<date>` once read, as installimage does with `-c`;
//! the config and debug log are saved in the new system as `/installimage.conf` and
//! `/installimage.debug`. Ubuntu-named images have `netplan generate` run in them (fatal on
//! stderr), and every image must run `/usr/bin/env true` in a chroot (installimage's container
//! check). Not simulated: `nfs` image sources, GPG verification of `URL.sig` (fetched, not
//! checked), software RAID, LVM and encryption on disk images (those layouts go to a directory).
//! Encryption (`crypt` after a `PART`'s size, with `CRYPTPASSWORD`) is carried as installimage
//! does it in the files it writes: `/etc/crypttab`, `/dev/mapper/luks-<uuid>` entries marked
//! `# crypted` in `/etc/fstab`, `dm-crypt` in Ubuntu's `/etc/modules`; the container itself is
//! a stand-in in the [`Manifest`] that opens with the passphrase installimage read.
//!
//! What is checked but not run, because nothing boots a kernel here: `update-initramfs` and
//! `grub-install` must exist in the image and a kernel must be in `/boot` (an image without them
//! fails as on a real server), but they are not executed; the debug log says so.
//!
//! The machine itself (architecture, UEFI, drives and their sizes, address) comes from
//! [`MachineFacts`]; inside a simulated rescue system it is read from [`FACTS_PATH`].

mod config;
mod install;
mod validate;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use install::{EncryptedPartition, InstalledDisk, InstalledPartition, MANIFEST_NAME, Manifest};
pub use validate::{ImageInfo, image_info};

/// Where the simulated rescue system keeps the machine facts for [`main_from_args`].
pub const FACTS_PATH: &str = "/root/.oldroot/nfs/install/caph-sim-machine.json";

/// Where installimage lives in the rescue system.
pub const INSTALLIMAGE_PATH: &str = "/root/.oldroot/nfs/install/installimage";

/// A drive as the rescue system sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The device path used in `DRIVE<n>` lines, e.g. `/dev/sda`.
    pub device: String,
    pub size_bytes: u64,
}

/// What installimage can find out about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// `x86_64` or `aarch64` (`uname -m`).
    pub arch: String,
    /// Booted by UEFI (`/sys/firmware/efi` exists).
    pub uefi: bool,
    pub drives: Vec<Drive>,
    /// The main address, written to the network config and `/etc/hosts`.
    pub ipv4: String,
    /// Its prefix length (the network installimage writes a host route to).
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// The IPv4 default gateway, where there is one.
    #[serde(default)]
    pub ipv4_gateway: Option<String>,
    /// An IPv6 address with its prefix length (`2a01:4f8::2/64`), where the machine has one.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// The IPv6 default gateway, where there is one.
    #[serde(default)]
    pub ipv6_gateway: Option<String>,
    /// The main interface name for the network config.
    pub interface: String,
    /// Where the drives' contents live: one `<name>.img` per drive, or `root/` for a directory
    /// install, with a [`Manifest`] (`installed.json`) after a successful install.
    pub disk_dir: PathBuf,
    /// The real installimage beside the simulated one in this rescue system, run instead of
    /// the simulation wherever the layout allows (see [`why_simulated`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_installimage: Option<RealInstallimage>,
}

impl MachineFacts {
    /// The network installimage writes into the new system.
    pub fn network(&self) -> caph_boot::installimage::Network {
        caph_boot::installimage::Network {
            interface: self.interface.clone(),
            ipv4: self.ipv4.clone(),
            ipv4_prefix: self.ipv4_prefix,
            ipv4_gateway: self.ipv4_gateway.clone(),
            ipv6: self.ipv6.clone(),
            ipv6_gateway: self.ipv6_gateway.clone(),
        }
    }
}

fn default_ipv4_prefix() -> u8 {
    32
}

/// A real installimage (Hetzner's, or CAPH's fork) unpacked in a simulated rescue system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealInstallimage {
    /// Its `installimage` script, as the rescue system sees it.
    pub entry: PathBuf,
    /// What it is, for the line that says which installimage runs.
    pub label: String,
}

/// Where a simulated rescue system records which installimage ran last: `real` or `simulated`,
/// a tab, and the line that was printed. The host reads it after the rescue system goes down.
pub const RAN_PATH: &str = "/root/.oldroot/nfs/install/caph-sim-installimage-ran";

/// Why a config must go to the simulated installimage rather than the real one, or `None` when
/// the real one can install it on this machine. The kernel these simulations run on has no md
/// (software RAID), no device-mapper (LVM, encryption) and no vfat (the EFI system partition),
/// and the simulated rescue system has no internet for an image URL.
pub fn why_simulated(config: &str, facts: &MachineFacts) -> Option<String> {
    let vars = config::read_vars(config, facts);
    if facts.uefi {
        return Some("the server boots by UEFI, and this kernel cannot mount the EFI system partition (no vfat)".into());
    }
    if vars.count_drives > 1 || vars.format_drives.iter().any(|format| *format) {
        return Some("the layout uses more than one drive".into());
    }
    if vars.swraid == "1" {
        return Some("the layout uses software RAID, and this kernel has no md".into());
    }
    if vars.lvm {
        return Some("the layout uses LVM, and this kernel has no device-mapper".into());
    }
    if vars.crypt {
        return Some("the layout is encrypted, and this kernel has no device-mapper".into());
    }
    if vars.image.contains("://") {
        return Some("the image is a URL, and the simulated rescue system has no internet".into());
    }
    None
}

impl MachineFacts {
    /// An x86_64 BIOS machine with two drives of `drive_bytes` (`/dev/sda`, `/dev/sdb`).
    pub fn two_drives(drive_bytes: u64, disk_dir: &Path) -> MachineFacts {
        MachineFacts {
            arch: "x86_64".into(),
            uefi: false,
            drives: ["/dev/sda", "/dev/sdb"]
                .into_iter()
                .map(|device| Drive {
                    device: device.into(),
                    size_bytes: drive_bytes,
                })
                .collect(),
            ipv4: "127.0.0.2".into(),
            ipv4_prefix: 32,
            ipv4_gateway: None,
            ipv6: None,
            ipv6_gateway: None,
            interface: "eth0".into(),
            disk_dir: disk_dir.to_owned(),
            real_installimage: None,
        }
    }
}

/// Checks an autosetup file against `facts` with installimage's rules; returns the messages
/// installimage would log (empty when it accepts the config). Usually one message: validation
/// stops at the first failed check, except after a duplicate drive.
pub fn validate(config: &str, facts: &MachineFacts) -> Vec<String> {
    let vars = config::read_vars(config, facts);
    validate::validate_vars(&vars, facts)
}

/// How the disk is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskMode {
    /// Raw disk images where the layout allows it, else a directory.
    #[default]
    Auto,
    /// Always a directory (`<disk_dir>/root`).
    Directory,
}

/// The keyboard during the 20-second wait.
pub enum Input {
    /// As if `x` was typed at once.
    SkipWait,
    /// Read bytes as `read -t1 -n1` does: an `x` ends the wait, end of input makes the remaining
    /// seconds pass at once, silence waits a second per dot.
    Reader(Box<dyn Read + Send>),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Input::SkipWait => "SkipWait",
            Input::Reader(_) => "Reader",
        })
    }
}

/// One run of installimage.
#[derive(Debug)]
pub struct Options {
    /// `-c FILE` (relative to the current directory, as given on the command line).
    pub config: PathBuf,
    /// `-x FILE`.
    pub post_install: Option<PathBuf>,
    pub facts: MachineFacts,
    /// The rescue system's `/`: `/autosetup`, `/root/debug.txt`, `/root/.ssh/authorized_keys`
    /// and local image paths are below it. `/` inside a simulated rescue system; a temporary
    /// directory in tests.
    pub system_root: PathBuf,
    pub disk_mode: DiskMode,
    pub input: Input,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// 0 after `INSTALLATION COMPLETE`, 1 otherwise.
    pub exit_code: i32,
    /// Validation messages, or the error that stopped the install.
    pub errors: Vec<String>,
    /// What was installed, after success.
    pub manifest: Option<Manifest>,
}

/// Runs installimage: validation, the wait, the install. Terminal output goes to `out`.
pub fn run(mut options: Options, out: &mut dyn Write) -> Outcome {
    let mut log = install::DebugLog::open(&options.system_root.join("root/debug.txt"));
    log.line("# starting installimage (caph-sim)");
    let config_text = match std::fs::read_to_string(&options.config) {
        Ok(text) => text,
        Err(_) => {
            let message = format!(
                "=> FAILED: config file {} for autosetup not found",
                options.config.display()
            );
            log.line(&message);
            let _ = writeln!(out, "{message}");
            return failed(vec![message]);
        }
    };
    if let Some(script) = &options.post_install
        && !script.exists()
    {
        let message = format!(
            "=> FAILED: post-install file {} not found or not executable",
            script.display()
        );
        log.line(&message);
        let _ = writeln!(out, "{message}");
        return failed(vec![message]);
    }
    // `-c` copies the file to /autosetup, which is what the install reads from then on.
    let autosetup = options.system_root.join("autosetup");
    if autosetup != options.config {
        let _ = std::fs::write(&autosetup, &config_text);
    }
    // installimage reads /autosetup once and, when started with `-c`, moves it aside: a second
    // run needs the file written again.
    let _ = std::fs::rename(
        &autosetup,
        options
            .system_root
            .join(format!("autosetup.bak-{}", backup_stamp())),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Found AUTOSETUP file '/autosetup'");
    let _ = writeln!(out, "Running unattended installimage installation ...");
    let _ = writeln!(out);
    for line in config_text.lines() {
        if !line.starts_with('#') && !line.is_empty() {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out);

    log.line("# validating config ...");
    let vars = config::read_vars(&config_text, &options.facts);
    let errors = validate::validate_vars(&vars, &options.facts);
    if !errors.is_empty() {
        for error in &errors {
            log.output(error);
        }
        let _ = writeln!(out, "Cancelled.");
        return failed(errors);
    }

    let _ = writeln!(out, "WARNING:");
    let _ = writeln!(out, "  Starting installation in 20 seconds ...");
    let _ = writeln!(out, "  Press X to continue immediately ...");
    let _ = writeln!(out, "  Installation will DELETE ALL DATA ON DISK(s)!");
    let _ = writeln!(out, "  Press CTRL-C to abort now!");
    let _ = write!(out, "  => ");
    let _ = out.flush();
    wait_for_x(std::mem::replace(&mut options.input, Input::SkipWait), out);
    let _ = writeln!(out);

    log.line("# executing installfile ...");
    match install::install(&vars, &options.facts, &options, &config_text, &mut log, out) {
        Ok(manifest) => Outcome {
            exit_code: 0,
            errors: Vec::new(),
            manifest: Some(manifest),
        },
        Err(error) => {
            log.line(&error);
            let _ = writeln!(out, "{error}");
            failed(vec![error])
        }
    }
}

/// `date +%Y%m%d-%H%M%S` in UTC.
fn backup_stamp() -> String {
    let total = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    // Days to a civil date, with the epoch shifted to 0000-03-01 so leap days come last.
    let days = (total / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let seconds = total % 86_400;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        (seconds % 3600) / 60,
        seconds % 60
    )
}

fn failed(errors: Vec<String>) -> Outcome {
    Outcome {
        exit_code: 1,
        errors,
        manifest: None,
    }
}

/// The 20 dots: one a second, `x` or `X` ends the wait.
fn wait_for_x(input: Input, out: &mut dyn Write) {
    // installimage's loop: 20 reads of one key with a one-second timeout.
    const SECONDS: u32 = 20;
    let receiver = match input {
        Input::SkipWait => {
            let _ = write!(out, ".");
            return;
        }
        Input::Reader(mut reader) => {
            let (sender, receiver) = mpsc::channel::<Option<u8>>();
            // The reader may block forever (a terminal); the thread dies with the process.
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                loop {
                    match reader.read(&mut byte) {
                        Ok(1) => {
                            if sender.send(Some(byte[0])).is_err() {
                                return;
                            }
                        }
                        _ => {
                            let _ = sender.send(None);
                            return;
                        }
                    }
                }
            });
            receiver
        }
    };
    let mut at_end = false;
    for _ in 0..SECONDS {
        let _ = write!(out, ".");
        let _ = out.flush();
        if at_end {
            continue;
        }
        match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(Some(b'x' | b'X')) => return,
            Ok(Some(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => at_end = true,
        }
    }
}

/// `installimage [-a] -c FILE [-x FILE]` inside a simulated rescue system: facts from
/// [`FACTS_PATH`], `/` as the system root, stdin for the wait, stdout for output. Returns the
/// exit code.
pub fn main_from_args(args: &[String]) -> i32 {
    let mut stdout = std::io::stdout();
    let mut config = None;
    let mut post_install = None;
    let mut index = 0;
    while index < args.len() {
        match args[index].as_str() {
            "-a" => {}
            "-c" | "-x" if index + 1 < args.len() => {
                let value = PathBuf::from(&args[index + 1]);
                if args[index] == "-c" {
                    config = Some(value);
                } else {
                    post_install = Some(value);
                }
                index += 1;
            }
            "-h" => {
                let _ = writeln!(
                    stdout,
                    "usage: installimage -a -c <configfile> [-x <post-install>] (caph-sim: only these options are simulated)"
                );
                return 0;
            }
            other => {
                let _ = writeln!(
                    stdout,
                    "installimage (caph-sim): option {other} is not simulated; use -a -c FILE [-x FILE]"
                );
                return 1;
            }
        }
        index += 1;
    }
    let config = match config {
        Some(config) => config,
        None if Path::new("/autosetup").exists() => PathBuf::from("/autosetup"),
        None => {
            let _ = writeln!(
                stdout,
                "installimage (caph-sim): no -c FILE and no /autosetup; the interactive mode is not simulated"
            );
            return 1;
        }
    };
    let facts = match std::fs::read_to_string(FACTS_PATH)
        .map_err(|error| error.to_string())
        .and_then(|text| {
            serde_json::from_str::<MachineFacts>(&text).map_err(|error| error.to_string())
        }) {
        Ok(facts) => facts,
        Err(error) => {
            let _ = writeln!(
                stdout,
                "installimage (caph-sim): cannot read the machine facts in {FACTS_PATH}: {error}"
            );
            return 1;
        }
    };
    if let Some(real) = &facts.real_installimage {
        let config_text = std::fs::read_to_string(&config).unwrap_or_default();
        match why_simulated(&config_text, &facts) {
            None => {
                let line = format!("caph-sim: running {} for real", real.label);
                let _ = writeln!(stdout, "{line}");
                let _ = std::fs::write(RAN_PATH, format!("real\t{line}\n"));
                // What the last simulated install left must not pass for this one's result.
                let _ = std::fs::remove_file(facts.disk_dir.join(MANIFEST_NAME));
                let _ = stdout.flush();
                use std::os::unix::process::CommandExt as _;
                let failure = std::process::Command::new(&real.entry).args(args).exec();
                let _ = writeln!(
                    stdout,
                    "installimage (caph-sim): starting {}: {failure}",
                    real.entry.display()
                );
                return 1;
            }
            Some(reason) => {
                let line = format!("caph-sim: running the simulated installimage: {reason}");
                let _ = writeln!(stdout, "{line}");
                let _ = std::fs::write(RAN_PATH, format!("simulated\t{line}\n"));
            }
        }
    } else {
        // Without a real one there is no choice to announce, but the host still learns what ran.
        let _ = std::fs::write(
            RAN_PATH,
            "simulated\tcaph-sim: running the simulated installimage (no real one in this rescue system)\n",
        );
    }
    let outcome = run(
        Options {
            config,
            post_install,
            facts,
            system_root: PathBuf::from("/"),
            disk_mode: DiskMode::Auto,
            input: Input::Reader(Box::new(std::io::stdin())),
        },
        &mut stdout,
    );
    outcome.exit_code
}
