//! The robot backend: installs a rootfs tarball on a dedicated server through the rescue system
//! and installimage, then checks that the installed node is what the spec describes.
//!
//! One install ([`RobotBackend::install`]) goes:
//! 1. **prepare** (local, nothing touched): the autosetup is rendered from the layout (the spec's,
//!    or one the caller gives) with the hostname and the tarball's file name, and checked with
//!    installimage's rules ([`crate::autosetup::validate`]);
//! 2. **key**: the SSH key (an ephemeral ed25519 key, or the caller's) is ensured in Robot by MD5
//!    fingerprint;
//! 3. **rescue**: an old rescue activation is deleted, a new one made with the key;
//! 4. **reset**: `sw` first (when offered), then `hw`, each with its own bounded wait;
//! 5. **rescue SSH**: hostname `rescue`, installimage present, and the activation used up (so it is
//!    the new rescue boot, not an old system still answering); its host key is trusted on first use
//!    and pinned for the run;
//! 6. **upload**: the tarball streamed to `/root/<name>`, hashed on the rescue system as it is
//!    written and renamed into place only when that sha256 is the expected one: the one recorded
//!    in a `<tarball>.sha256` beside it (read, refused when malformed, and checked against the
//!    tarball before step 2, so that a tarball changed since touches nothing; the upload itself
//!    then hashes nothing here), else the one computed here while sending;
//! 7. `/autosetup` and `/root/post-install.sh` written (the script's last line prints
//!    [`POST_INSTALL_MARKER`](crate::autosetup::POST_INSTALL_MARKER));
//! 8. **installimage** run with `x` on stdin (skips the 20-second wait), its output streamed to
//!    progress; `INSTALLATION COMPLETE` and the marker are required; a rejection is surfaced with
//!    installimage's own words from `/root/debug.txt`;
//! 9. **reboot**: `reboot` over SSH, a `hw` reset when the server does not go down; then the
//!    installed system must answer with the target hostname and a new host key (its own
//!    trust-on-first-use pin, which must differ from the rescue key);
//! 10. **verify**: containerd enabled (and active where systemd runs), kubelet at the spec's
//!     version, swap off, the spec's sysctls in `/etc/sysctl.d`;
//! 11. **report** ([`InstallReport`]).
//!
//! On any error or cancellation, the rescue activation this run made is removed when still
//! active, an ephemeral Robot key is deleted, and the error says in which state the server is
//! left ([`InstallError`]).

mod checksum_file;
mod flow;
mod ledger;
mod prepare;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use caph_core::backend::{
    Artifact, Backend, BackendError, BuildRequest, Context, GcOptions, GcReport, PreflightReport,
};
use caph_core::spec::DiskLayout;
use caph_core::{Arch, ImageSpec};
use caph_ssh::KeyPair;

use crate::autosetup::{Machine, Problem};
use crate::client::{RobotClient, RobotError};

pub use prepare::{PreparedInstall, prepare};

/// Where installimage lives in the rescue system.
pub const INSTALLIMAGE_PATH: &str = "/root/.oldroot/nfs/install/installimage";
/// Where the post-install script is written in the rescue system.
pub const POST_INSTALL_PATH: &str = "/root/post-install.sh";
/// Name prefix of the ephemeral keys this backend stores in Robot (for `gc`).
pub const EPHEMERAL_KEY_PREFIX: &str = "caph-image-build-";

/// Timeouts and other knobs; the defaults fit real dedicated servers, tests use seconds.
#[derive(Debug, Clone)]
pub struct RobotBackendConfig {
    /// The SSH port of the rescue and installed systems.
    pub ssh_port: u16,
    /// How long to wait for the rescue system after a `sw` reset before escalating to `hw`.
    pub sw_reset_wait: Duration,
    /// How long to wait for the rescue system after a `hw` reset before giving up.
    pub hw_reset_wait: Duration,
    /// How long to wait for the rescue system to go down after `reboot` before a `hw` reset.
    pub reboot_wait: Duration,
    /// How long to wait for the installed system to answer after the reboot.
    pub installed_wait: Duration,
    /// The bound on one installimage run.
    pub install_timeout: Duration,
    /// Pause between checks while waiting for a system to come up or go down.
    pub poll_interval: Duration,
    /// The bound on one SSH dial.
    pub dial_timeout: Duration,
    /// The bound on cleanup after an error or a cancellation.
    pub cleanup_timeout: Duration,
}

/// Cluster API Provider Hetzner escalates from `sw` to `hw` after 10 minutes: a `sw` reset needs
/// the old OS to shut down cleanly, and a rescue boot of a real server takes 1-5 minutes.
const DEFAULT_SW_RESET_WAIT: Duration = Duration::from_secs(600);
/// CAPH gives up 10 minutes after a `hw` reset: a power cycle plus the rescue boot fits easily.
const DEFAULT_HW_RESET_WAIT: Duration = Duration::from_secs(600);
/// The rescue system reboots at once; three minutes of it still answering means `reboot` did not
/// take, so a `hw` reset follows.
const DEFAULT_REBOOT_WAIT: Duration = Duration::from_secs(180);
/// A dedicated server's firmware, RAID controller and first boot take several minutes; 15 covers
/// slow machines.
const DEFAULT_INSTALLED_WAIT: Duration = Duration::from_secs(900);
/// installimage of a few-GB image takes 5-15 minutes; an hour means it hangs.
const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// CAPH polls every 10 s: often enough to add little latency to minute-long boots, rarely enough
/// for Robot's hourly request limits.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// CAPH's SSH dial timeout: a booting server drops packets, and a live sshd answers in far less.
const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Cleanup is two or three Robot calls.
const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for RobotBackendConfig {
    fn default() -> Self {
        RobotBackendConfig {
            ssh_port: 22,
            sw_reset_wait: DEFAULT_SW_RESET_WAIT,
            hw_reset_wait: DEFAULT_HW_RESET_WAIT,
            reboot_wait: DEFAULT_REBOOT_WAIT,
            installed_wait: DEFAULT_INSTALLED_WAIT,
            install_timeout: DEFAULT_INSTALL_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
        }
    }
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallTarget {
    /// The Robot server number.
    pub server_number: u64,
    /// The rootfs tarball; its file name must follow installimage's naming rule
    /// (`Debian-1200-bookworm-amd64-<flavor>.tar.gz`).
    pub tarball: PathBuf,
    /// A layout instead of the spec's `[robot.disk]` (see [`layout_from_autosetup`] for files).
    pub layout: Option<DiskLayout>,
    /// A hostname instead of the spec's pattern with `{server_number}` filled in.
    pub hostname: Option<String>,
    /// The machine, for installimage's machine-dependent rules; default: x86_64, UEFI as the
    /// layout says.
    pub machine: Option<Machine>,
    /// The key to use; default an ephemeral ed25519 key made for this run (and deleted from
    /// Robot afterwards). A given key is added to Robot when missing and left there.
    pub key: Option<KeyPair>,
    /// MD5 fingerprints of further Robot keys to authorize in the rescue system; installimage
    /// copies them into the installed system's `/root/.ssh/authorized_keys`.
    pub extra_keys: Vec<String>,
}

impl InstallTarget {
    /// Installs `tarball` on server `server_number` with the spec's layout and hostname.
    pub fn new(server_number: u64, tarball: impl Into<PathBuf>) -> InstallTarget {
        InstallTarget {
            server_number,
            tarball: tarball.into(),
            layout: None,
            hostname: None,
            machine: None,
            key: None,
            extra_keys: Vec::new(),
        }
    }
}

/// The disk layout of an autosetup file (`DRIVE`, `SWRAID`, `PART` with `crypt`, `LV` and
/// `CRYPTPASSWORD` lines, as the shipped `installimage/*.autosetup` files hold); any other key,
/// `HOSTNAME` and `IMAGE` included, is refused with its line, since the backend writes its own
/// file and would drop it ([`crate::autosetup::parse_layout`]).
pub fn layout_from_autosetup(text: &str) -> Result<DiskLayout, Vec<Problem>> {
    crate::autosetup::parse_layout(text)
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The server number.
    pub server_number: u64,
    /// The installed system's hostname.
    pub hostname: String,
    /// The server's main IPv4 address.
    pub ip: String,
    /// The installed system's host key (OpenSSH line), for a known_hosts file.
    pub host_key: String,
    /// Its SHA256 fingerprint.
    pub host_key_fingerprint: String,
    /// The rescue system's host key fingerprint (trusted on first use).
    pub rescue_host_key_fingerprint: String,
    /// The image file name as installimage saw it.
    pub image: String,
    /// sha256 of the tarball, as checked on the rescue system.
    pub tarball_sha256: String,
    /// Tarball size in bytes.
    pub tarball_bytes: u64,
    /// The autosetup file that was used, its `CRYPTPASSWORD` filtered.
    pub autosetup: String,
    /// What verification checked, one line each (with notes on checks that could not apply).
    pub checks: Vec<String>,
    /// Wall time of the whole install.
    pub duration: Duration,
}

/// Why an install failed, and the state it leaves the server in.
///
/// Its message stands alone: the cause with its whole chain, then the state and the cleanup, so
/// it has no `source()` of its own (printing a chain would repeat the cause).
#[derive(Debug)]
pub struct InstallError {
    /// The server number.
    pub server_number: u64,
    /// The step that failed (`prepare`, `key`, `rescue`, `upload`, `installimage`, `reboot`, `verify`).
    pub phase: &'static str,
    /// What went wrong.
    pub cause: InstallCause,
    /// The state the server is left in, in words.
    pub state: String,
    /// What cleanup did, one line each.
    pub cleanup: Vec<String>,
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {} ({} step): {}\nstate: {}",
            self.server_number,
            self.phase,
            error_chain(&self.cause),
            self.state
        )?;
        if !self.cleanup.is_empty() {
            write!(f, "\ncleanup: {}", self.cleanup.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for InstallError {}

/// An error with its causes joined by `: `.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl InstallError {
    /// Whether the run was cancelled (Ctrl-C).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.cause, InstallCause::Cancelled)
    }
}

/// The whole message is the context; the source only marks the kind of failure (as the hcloud
/// backend does), so `{:#}` prints each fact once.
#[derive(Debug, thiserror::Error)]
#[error("the install on the dedicated server failed")]
struct InstallFailed;

impl From<InstallError> for BackendError {
    fn from(error: InstallError) -> BackendError {
        if error.is_cancelled() {
            let mut cleanup = error.state.clone();
            if !error.cleanup.is_empty() {
                cleanup.push_str(&format!("; {}", error.cleanup.join("; ")));
            }
            return BackendError::Cancelled {
                phase: error.phase,
                cleanup,
            };
        }
        BackendError::Failed {
            context: error.to_string(),
            source: Box::new(InstallFailed),
        }
    }
}

/// The cause of an [`InstallError`].
#[derive(Debug, thiserror::Error)]
pub enum InstallCause {
    /// The autosetup breaks installimage's rules (checked locally, before anything is touched).
    #[error("the autosetup does not pass installimage's rules:\n  {}", .problems.join("\n  "))]
    Autosetup {
        /// Every problem, with its fix.
        problems: Vec<String>,
        /// The rendered autosetup.
        text: String,
    },
    /// The layout does not fit the drives the rescue system reports (checked before the upload).
    #[error(
        "the layout does not fit the server's drives:\n  {}\nthe rescue system shows: {}",
        .problems.join("\n  "),
        if .found.is_empty() { "no drives".to_string() } else { .found.join("; ") }
    )]
    Drives {
        /// Every problem.
        problems: Vec<String>,
        /// The drives, as `lsblk` in the rescue system lists them.
        found: Vec<String>,
    },
    /// The spec or the arguments do not describe an install.
    #[error("{0}")]
    Invalid(String),
    /// The tarball cannot be read.
    #[error("reading {path}")]
    Tarball {
        /// The tarball.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The `.sha256` file beside the tarball is not one `sha256sum` line for it (checked before
    /// anything is touched).
    #[error(
        "{path} {problem}; fix: write it again in the tarball's directory with `sha256sum {tarball} > {tarball}.sha256`, or remove it to have the sha256 computed while uploading"
    )]
    ChecksumFile {
        /// The checksum file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The tarball's file name.
        tarball: String,
    },
    /// The tarball does not match the `.sha256` file beside it (checked before anything is
    /// touched).
    #[error(
        "{path} has sha256 {actual}, but {checksum_file} beside it says {expected}: the tarball changed after its checksum was written; build or copy it again, or remove the checksum file if the change is wanted"
    )]
    TarballChecksum {
        /// The tarball.
        path: PathBuf,
        /// The checksum file's name.
        checksum_file: String,
        /// From the `.sha256` file.
        expected: String,
        /// The tarball's.
        actual: String,
    },
    /// A Robot call failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        source: Box<RobotError>,
    },
    /// SSH failed.
    #[error("{what}")]
    Ssh {
        /// What was being done.
        what: String,
        /// The SSH error.
        source: Box<caph_ssh::SshError>,
    },
    /// The rescue system did not come up.
    #[error("the rescue system did not come up: {resets}; last seen: {last}")]
    RescueTimeout {
        /// The resets made and how long each was waited for.
        resets: String,
        /// What the last connection attempt saw.
        last: String,
    },
    /// installimage failed or rejected the config.
    #[error("installimage {how}:\n{messages}\nits last output:\n{tail}")]
    InstallImage {
        /// "rejected the config" or "failed (exit status N)".
        how: String,
        /// installimage's own error lines (from its output and `/root/debug.txt`).
        messages: String,
        /// The last lines of its output.
        tail: String,
    },
    /// installimage finished but the post-install script did not print its marker.
    #[error(
        "installimage finished, but the post-install script did not print its marker {marker} (it failed before its last line; installimage ignores its exit code); its last output:\n{tail}"
    )]
    MarkerMissing {
        /// The marker.
        marker: &'static str,
        /// The last lines of the output.
        tail: String,
    },
    /// The installed system did not come up as expected.
    #[error("the installed system did not come up: {0}")]
    Installed(String),
    /// The installed node is not what the spec describes.
    #[error("the installed node does not match the spec:\n  {}", .0.join("\n  "))]
    Verify(Vec<String>),
    /// Key generation failed.
    #[error("generating the SSH key: {0}")]
    Keys(#[from] caph_ssh::KeyError),
    /// Ctrl-C.
    #[error("cancelled")]
    Cancelled,
}

/// Installs tarballs on dedicated servers; see the module documentation.
#[derive(Debug, Clone)]
pub struct RobotBackend {
    client: RobotClient,
    config: Arc<RobotBackendConfig>,
    target: Option<InstallTarget>,
}

impl RobotBackend {
    /// A backend that talks to Robot through `client`.
    pub fn new(client: RobotClient, config: RobotBackendConfig) -> RobotBackend {
        RobotBackend {
            client,
            config: Arc::new(config),
            target: None,
        }
    }

    /// The same backend, with the target that [`Backend::build`] installs on.
    pub fn with_target(mut self, target: InstallTarget) -> RobotBackend {
        self.target = Some(target);
        self
    }

    /// The client.
    pub fn client(&self) -> &RobotClient {
        &self.client
    }

    /// Runs one install; see the module documentation. Progress goes to `context.progress`
    /// under the scope `server <n>`; `context.cancel` stops it (with cleanup).
    pub async fn install(
        &self,
        context: &Context,
        spec: &ImageSpec,
        target: &InstallTarget,
    ) -> Result<InstallReport, InstallError> {
        flow::install(&self.client, &self.config, context, spec, target).await
    }
}

#[async_trait::async_trait]
impl Backend for RobotBackend {
    fn name(&self) -> &'static str {
        "robot"
    }

    async fn preflight(
        &self,
        _context: &Context,
        request: &BuildRequest,
    ) -> Result<PreflightReport, BackendError> {
        let mut report = PreflightReport::default();
        let Some(target) = &self.target else {
            report
                .problems
                .push("no server given: name the dedicated server to install on".to_string());
            return Ok(report);
        };
        match prepare(&request.spec, target) {
            Ok(prepared) => report.checks.push(format!(
                "autosetup for {} with {} passes installimage's rules",
                prepared.hostname, prepared.image_name
            )),
            Err(cause) => report.problems.push(cause.to_string()),
        }
        match self.client.server(target.server_number).await {
            Ok(server) => report.checks.push(format!(
                "server {} ({}, {}) found",
                server.server_number, server.product, server.dc
            )),
            Err(error) => report
                .problems
                .push(format!("server {}: {error}", target.server_number)),
        }
        Ok(report)
    }

    async fn build(
        &self,
        context: &Context,
        request: &BuildRequest,
    ) -> Result<Vec<Artifact>, BackendError> {
        let Some(target) = &self.target else {
            return Err(BackendError::Preflight(vec![
                "no server given: name the dedicated server to install on".to_string(),
            ]));
        };
        let report = self.install(context, &request.spec, target).await?;
        let arch = if report.image.contains("-arm64-") {
            Arch::Arm
        } else {
            Arch::X86
        };
        let mut labels = BTreeMap::new();
        labels.insert("hostname".to_string(), report.hostname.clone());
        labels.insert("ip".to_string(), report.ip.clone());
        labels.insert(
            "host-key-fingerprint".to_string(),
            report.host_key_fingerprint.clone(),
        );
        labels.insert("image".to_string(), report.image.clone());
        labels.insert("sha256".to_string(), report.tarball_sha256.clone());
        Ok(vec![Artifact {
            id: format!("server {}", report.server_number),
            arch,
            name: request.spec.image.name.clone(),
            size_bytes: Some(report.tarball_bytes),
            duration: Some(report.duration),
            created: None,
            labels,
            notes: Vec::new(),
        }])
    }

    async fn list(
        &self,
        _context: &Context,
        _name: Option<&str>,
    ) -> Result<Vec<Artifact>, BackendError> {
        // Robot keeps no images: an install lives on the server's disks, not in the account.
        Ok(Vec::new())
    }

    async fn gc(&self, _context: &Context, options: GcOptions) -> Result<GcReport, BackendError> {
        ledger::gc(&self.client, options).await
    }
}
