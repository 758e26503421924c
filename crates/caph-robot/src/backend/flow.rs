//! One install, step by step, with a tracker that knows the step and the state the server is
//! in, so that every error can say what was left behind.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caph_core::ImageSpec;
use caph_core::backend::{Context, Phase, ProgressEvent};
use caph_ssh::{
    ConnectConfig, ConnectEvent, HostKeyPolicy, KeyPair, OutputLine, PublicKey, Session, SshError,
    TofuPin,
};

use super::checksum_file;
use super::error_chain;
use super::ledger::{self, Ledger, SharedLedger};
use super::prepare::{PreparedInstall, prepare};
use super::verify;
use super::{
    EPHEMERAL_KEY_PREFIX, INSTALLIMAGE_PATH, InstallCause, InstallError, InstallReport,
    InstallTarget, POST_INSTALL_PATH, RobotBackendConfig,
};
use crate::autosetup::POST_INSTALL_MARKER;
use crate::client::{OneOrMany, ResetType, RobotClient, RobotError, md5_fingerprint};

/// How many of installimage's last output lines go into an error.
const TAIL_LINES: usize = 30;
/// Upload progress is reported every this many bytes: often enough for a progress bar, rarely
/// enough not to flood a log with a multi-GB image.
const PROGRESS_STEP_BYTES: u64 = 8 << 20;
/// The bound on the `reboot` command itself: it returns at once, or the connection drops.
const REBOOT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on short probing commands (`hostname`, the verification script).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the node checks may take: the cloud-init check waits up to 5 minutes for first boot
/// to finish (as CAPH waits for it), plus a minute for the rest.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(6 * 60);

/// What the server holds and runs, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Untouched,
    /// A key or an activation was made in Robot, no reset yet.
    Touched,
    Resetting,
    InRescue,
    /// installimage rejected the config before touching the disks.
    Rejected,
    Installing,
    Installed,
    Rebooting,
    Booted,
}

impl Stage {
    fn describe(self, server: u64, hostname: &str) -> String {
        match self {
            Stage::Untouched => format!("nothing was changed on server {server}"),
            Stage::Touched => format!(
                "server {server} was not reset: its running system and its disks are unchanged"
            ),
            Stage::Resetting => format!(
                "server {server} was reset (or a reset was under way) and is down or booting; installimage did not run, so nothing on its disks changed (a reset without rescue boots its old system)"
            ),
            Stage::InRescue => format!(
                "server {server} is in the rescue system; installimage did not run; nothing on its disks changed (a reset boots its old system)"
            ),
            Stage::Rejected => format!(
                "server {server} is in the rescue system; installimage stopped before touching the disks, so nothing on them changed"
            ),
            Stage::Installing => format!(
                "installimage failed or was interrupted while installing: the disks of server {server} were repartitioned and may hold no bootable system; it is in the rescue system; rerun the build"
            ),
            Stage::Installed => format!(
                "installimage wrote the new system to the disks of server {server}, but the install is incomplete; it is still in the rescue system; rerun the build"
            ),
            Stage::Rebooting => format!(
                "the new system is on the disks of server {server}, which was rebooting into it ({hostname})"
            ),
            Stage::Booted => format!(
                "the installed system runs on server {server} as {hostname}, but it is not what the spec describes; fix the image and rerun the build"
            ),
        }
    }
}

/// The step and the state of one install, readable after its future is dropped.
struct Tracker {
    scope: String,
    step: Mutex<&'static str>,
    stage: Mutex<Stage>,
}

impl Tracker {
    fn new(server: u64) -> Tracker {
        Tracker {
            scope: format!("server {server}"),
            step: Mutex::new("prepare"),
            stage: Mutex::new(Stage::Untouched),
        }
    }

    fn enter(&self, context: &Context, phase: Phase, step: &'static str, detail: String) {
        *self
            .step
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = step;
        context.progress.event(ProgressEvent::Phase {
            scope: self.scope.clone(),
            phase,
            detail,
        });
    }

    fn step(&self) -> &'static str {
        *self
            .step
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_stage(&self, stage: Stage) {
        *self
            .stage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = stage;
    }

    fn stage(&self) -> Stage {
        *self
            .stage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn say(&self, context: &Context, line: impl Into<String>) {
        context.progress.event(ProgressEvent::Output {
            scope: self.scope.clone(),
            line: line.into(),
        });
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(RobotError) -> InstallCause {
    let what = what.into();
    move |source| InstallCause::Api {
        what,
        source: Box::new(source),
    }
}

fn ssh(what: impl Into<String>) -> impl FnOnce(SshError) -> InstallCause {
    let what = what.into();
    move |source| InstallCause::Ssh {
        what,
        source: Box::new(source),
    }
}

pub(crate) async fn install(
    client: &RobotClient,
    config: &RobotBackendConfig,
    context: &Context,
    spec: &ImageSpec,
    target: &InstallTarget,
) -> Result<InstallReport, InstallError> {
    let server = target.server_number;
    let tracker = Tracker::new(server);
    tracker.enter(
        context,
        Phase::Preflight,
        "prepare",
        format!("autosetup for {}", target.tarball.display()),
    );
    // Local checks first: nothing is touched when they fail.
    let prepared = match prepare(spec, target) {
        Ok(prepared) => prepared,
        Err(cause) => {
            return Err(InstallError {
                server_number: server,
                phase: "prepare",
                cause,
                state: Stage::Untouched.describe(server, ""),
                cleanup: Vec::new(),
            });
        }
    };
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
    let work = run(
        client, config, context, spec, target, &prepared, &tracker, &ledger,
    );
    // On cancellation the work future is dropped wherever it waits (an SSH command ends with its
    // connection); the ledger and the tracker survive it.
    let result = tokio::select! {
        result = work => result,
        () = context.cancel.cancelled() => Err(InstallCause::Cancelled),
    };
    let held = ledger::snapshot(&ledger);
    let failed_step = tracker.step();
    tracker.enter(
        context,
        Phase::Cleanup,
        "cleanup",
        if result.is_ok() {
            "temporary Robot changes".to_string()
        } else {
            format!("after {failed_step} failed")
        },
    );
    let cleanup = ledger::clean_bounded(client, server, &held, config.cleanup_timeout).await;
    for line in &cleanup {
        tracker.say(context, line.clone());
    }
    match result {
        Ok(report) => {
            tracker.enter(
                context,
                Phase::Done,
                "done",
                format!(
                    "{} runs on server {server} ({}), installed in {:.0?}",
                    report.hostname, report.ip, report.duration
                ),
            );
            Ok(report)
        }
        Err(cause) => Err(InstallError {
            server_number: server,
            phase: failed_step,
            cause,
            state: tracker.stage().describe(server, &prepared.hostname),
            cleanup,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    client: &RobotClient,
    config: &RobotBackendConfig,
    context: &Context,
    spec: &ImageSpec,
    target: &InstallTarget,
    prepared: &PreparedInstall,
    tracker: &Tracker,
    ledger: &SharedLedger,
) -> Result<InstallReport, InstallCause> {
    let started = Instant::now();
    let server = target.server_number;
    tracker.say(
        context,
        format!(
            "autosetup passes installimage's rules: {} as {}",
            prepared.image_name, prepared.hostname
        ),
    );
    let tarball_metadata = tokio::fs::metadata(&target.tarball)
        .await
        .map_err(|source| InstallCause::Tarball {
            path: target.tarball.clone(),
            source,
        })?;
    // A FIFO or a device would hang the checksum or stream forever.
    if !tarball_metadata.is_file() {
        return Err(InstallCause::Tarball {
            path: target.tarball.clone(),
            source: std::io::Error::other("not a regular file: only regular files are uploaded"),
        });
    }
    let tarball_bytes = tarball_metadata.len();
    // The digest recorded beside the tarball (as `build tarball` and `pack` write it): a
    // malformed file, or a tarball that no longer matches it, is refused now, before anything is
    // touched; the rescue system's digest of the upload must then equal it, so the upload itself
    // hashes nothing here.
    let recorded = checksum_file::read(&target.tarball).await?;
    match &recorded {
        Some(recorded) => {
            checksum_file::check(&target.tarball, recorded).await?;
            tracker.say(
                context,
                format!(
                    "sha256 {} matches {}; the rescue system's digest of the upload must equal it",
                    recorded.digest, recorded.file_name
                ),
            );
        }
        None => tracker.say(
            context,
            format!(
                "no {} beside the tarball: its sha256 is computed while it is sent",
                checksum_file::path_beside(&target.tarball).display()
            ),
        ),
    }

    // Key.
    tracker.enter(context, Phase::Create, "key", "the SSH key in Robot".into());
    let details = client
        .server(server)
        .await
        .map_err(api(format!("looking up server {server}")))?;
    let ip: IpAddr = details
        .server_ip
        .as_deref()
        .ok_or_else(|| {
            InstallCause::Invalid(format!(
                "server {server} has no IPv4 address; the rescue system is reached over IPv4"
            ))
        })?
        .parse()
        .map_err(|_| {
            InstallCause::Invalid(format!(
                "server {server}'s address {:?} is not an IPv4 address",
                details.server_ip
            ))
        })?;
    let address = SocketAddr::new(ip, config.ssh_port);
    let (key, ephemeral) = match &target.key {
        Some(key) => (key.clone(), false),
        None => (
            KeyPair::generate_ed25519(&format!("caph-image build {}", context.build_id))?,
            true,
        ),
    };
    let public = key.public_key().to_openssh();
    let fingerprint = md5_fingerprint(&public).ok_or_else(|| {
        InstallCause::Invalid("the SSH public key cannot be fingerprinted".to_string())
    })?;
    let known = client.keys().await.map_err(api("listing the Robot keys"))?;
    if known.iter().any(|stored| stored.fingerprint == fingerprint) {
        tracker.say(context, format!("key {fingerprint} is already in Robot"));
    } else {
        let name = format!("{EPHEMERAL_KEY_PREFIX}{}", context.build_id);
        if ephemeral {
            // Recorded before the call: a create whose answer is lost is still cleaned up.
            ledger::update(ledger, |held| held.created_key = Some(fingerprint.clone()));
            tracker.set_stage(Stage::Touched);
        }
        match client.create_key(&name, &public).await {
            Ok(created) => tracker.say(
                context,
                format!("stored key {} as {}", created.fingerprint, created.name),
            ),
            Err(error) if error.code() == Some("KEY_ALREADY_EXISTS") => {
                tracker.say(context, format!("key {fingerprint} is already in Robot"))
            }
            Err(error) => return Err(api("storing the SSH key in Robot")(error)),
        }
    }

    // Rescue activation: one-shot, so an old one is deleted before ours is made.
    tracker.enter(
        context,
        Phase::Create,
        "rescue",
        format!("rescue activation for server {server}"),
    );
    let rescue = client
        .rescue(server)
        .await
        .map_err(api("reading the rescue state"))?;
    if rescue.active {
        client
            .deactivate_rescue(server)
            .await
            .map_err(api("deleting the old rescue activation"))?;
        tracker.say(context, "deleted an old rescue activation");
    }
    let mut fingerprints = vec![fingerprint.clone()];
    fingerprints.extend(target.extra_keys.iter().cloned());
    ledger::update(ledger, |held| held.rescue_activated = true);
    tracker.set_stage(Stage::Touched);
    // The answer holds the rescue root password: it is dropped here, never printed.
    client
        .activate_rescue(server, &fingerprints)
        .await
        .map_err(api("activating the rescue system"))?;
    tracker.say(
        context,
        format!("rescue activated with key {}", fingerprints.join(", ")),
    );

    // Reset into the rescue system.
    let rescue_session = boot_rescue(
        client,
        config,
        context,
        tracker,
        server,
        address,
        &key,
        &fingerprints,
    )
    .await?;
    let rescue_key = rescue_session.host_key().clone();
    tracker.set_stage(Stage::InRescue);

    // The server's drives, as its rescue system sees them: the layout's hints resolved and the
    // layout checked against them before anything is uploaded or written.
    let listing = tokio::time::timeout(
        PROBE_TIMEOUT,
        rescue_session.exec_capture(crate::drives::LSBLK_COMMAND),
    )
    .await
    .map_err(|_| {
        InstallCause::Invalid(format!(
            "the rescue system did not list its drives within {PROBE_TIMEOUT:?}"
        ))
    })?
    .map_err(ssh("listing the drives in the rescue system".to_string()))?;
    if listing.exit_code != 0 {
        return Err(InstallCause::Invalid(format!(
            "`{}` failed in the rescue system (exit {}): {}",
            crate::drives::LSBLK_COMMAND,
            listing.exit_code,
            listing.stderr.trim()
        )));
    }
    let drives = crate::drives::parse_lsblk(&listing.stdout).map_err(InstallCause::Invalid)?;
    let autosetup_text = prepared.for_drives(&drives)?;
    tracker.say(
        context,
        format!(
            "drives: {}",
            drives
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );

    // Upload, checked on the rescue system before anything else.
    tracker.enter(
        context,
        Phase::Provision,
        "upload",
        format!(
            "{} ({tarball_bytes} bytes) to {}",
            prepared.image_name, prepared.remote_image
        ),
    );
    let file = tokio::fs::File::open(&target.tarball)
        .await
        .map_err(|source| InstallCause::Tarball {
            path: target.tarball.clone(),
            source,
        })?;
    let mut reported = 0u64;
    let mut on_progress = |sent| {
        if sent >= reported + PROGRESS_STEP_BYTES || sent == tarball_bytes {
            reported = sent;
            context.progress.event(ProgressEvent::Bytes {
                scope: tracker.scope.clone(),
                done: sent,
                total: Some(tarball_bytes),
            });
        }
    };
    // Either way the file appears at its path only once the rescue system's digest matched, so
    // installimage never reads anything else.
    let uploaded = match &recorded {
        Some(recorded) => rescue_session
            .upload_expecting(
                file,
                &prepared.remote_image,
                0o600,
                &recorded.digest,
                &mut on_progress,
            )
            .await
            .map_err(ssh(format!(
                "uploading {} to the rescue system, checked against {}",
                prepared.image_name, recorded.file_name
            )))?,
        None => rescue_session
            .upload(file, &prepared.remote_image, 0o600, &mut on_progress)
            .await
            .map_err(ssh(format!(
                "uploading {} to the rescue system",
                prepared.image_name
            )))?,
    };
    tracker.say(
        context,
        match &recorded {
            Some(recorded) => format!(
                "uploaded {} bytes; the rescue system's sha256 {} matches {}",
                uploaded.bytes, uploaded.sha256, recorded.file_name
            ),
            None => format!(
                "uploaded {} bytes; sha256 {} confirmed on the rescue system",
                uploaded.bytes, uploaded.sha256
            ),
        },
    );

    // The autosetup and the post-install script.
    for (path, text, mode) in [
        ("/autosetup", &autosetup_text, 0o600),
        (POST_INSTALL_PATH, &prepared.post_install, 0o700),
    ] {
        rescue_session
            .upload(text.as_bytes(), path, mode, &mut |_| {})
            .await
            .map_err(ssh(format!("writing {path}")))?;
    }

    // installimage.
    tracker.enter(
        context,
        Phase::Provision,
        "installimage",
        format!("installimage -a -c /autosetup -x {POST_INSTALL_PATH}"),
    );
    run_installimage(config, context, tracker, &rescue_session).await?;
    tracker.set_stage(Stage::Installed);

    // Reboot into the installed system.
    tracker.enter(
        context,
        Phase::Shutdown,
        "reboot",
        format!("into {}", prepared.hostname),
    );
    reboot(
        client,
        config,
        context,
        tracker,
        server,
        address,
        rescue_session,
    )
    .await?;
    tracker.set_stage(Stage::Rebooting);
    let mut last = String::from("nothing answered");
    let installed = wait_for_system(
        config,
        context,
        tracker,
        address,
        &key,
        config.installed_wait,
        &Expect::Installed {
            hostname: &prepared.hostname,
            rescue_key: &rescue_key,
        },
        &mut last,
    )
    .await?
    .ok_or_else(|| {
        InstallCause::Installed(format!(
            "no answer as {} within {:?}; last seen: {last}",
            prepared.hostname, config.installed_wait
        ))
    })?;
    tracker.set_stage(Stage::Booted);
    let host_key = installed.host_key().clone();
    tracker.say(
        context,
        format!(
            "{} is up; its host key {} (new, not the rescue system's) is trusted on first use",
            prepared.hostname,
            host_key.fingerprint()
        ),
    );

    // Verify.
    tracker.enter(
        context,
        Phase::Verify,
        "verify",
        "the node checks: modules, sysctls, swap, containerd, kubelet, time sync, cloud-init, host keys, machine-id".to_string(),
    );
    let facts = tokio::time::timeout(
        VERIFY_TIMEOUT,
        installed.exec_capture(&verify::facts_script(spec)),
    )
    .await
    .map_err(|_| {
        InstallCause::Installed(format!(
            "the verification commands did not finish within {VERIFY_TIMEOUT:?}"
        ))
    })?
    .map_err(ssh("verifying the installed node"))?;
    let verdict = verify::judge(spec, &facts.stdout);
    for check in &verdict.checks {
        tracker.say(context, format!("ok: {check}"));
    }
    if !verdict.problems.is_empty() {
        return Err(InstallCause::Verify(verdict.problems));
    }
    installed.close().await;

    Ok(InstallReport {
        server_number: server,
        hostname: prepared.hostname.clone(),
        ip: ip.to_string(),
        host_key: host_key.to_openssh(),
        host_key_fingerprint: host_key.fingerprint().to_string(),
        rescue_host_key_fingerprint: rescue_key.fingerprint().to_string(),
        image: prepared.image_name.clone(),
        tarball_sha256: uploaded.sha256,
        tarball_bytes,
        autosetup: crate::autosetup::redacted(&autosetup_text),
        checks: verdict.checks,
        duration: started.elapsed(),
    })
}

/// Resets into the rescue system: `sw` first when offered (a clean shutdown), then `hw`, each
/// with its own bounded wait.
#[allow(clippy::too_many_arguments)]
async fn boot_rescue(
    client: &RobotClient,
    config: &RobotBackendConfig,
    context: &Context,
    tracker: &Tracker,
    server: u64,
    address: SocketAddr,
    key: &KeyPair,
    fingerprints: &[String],
) -> Result<Session, InstallCause> {
    let options = client
        .reset_options(server)
        .await
        .map_err(api("reading the reset options"))?;
    let offered = match options.reset_type {
        OneOrMany::One(kind) => vec![kind],
        OneOrMany::Many(kinds) => kinds,
    };
    let mut resets = Vec::new();
    if offered.iter().any(|kind| kind == "sw") {
        resets.push((ResetType::Software, "sw", config.sw_reset_wait));
    }
    if offered.iter().any(|kind| kind == "hw") {
        resets.push((ResetType::Hardware, "hw", config.hw_reset_wait));
    }
    if resets.is_empty() {
        return Err(InstallCause::Invalid(format!(
            "server {server} offers neither a sw nor a hw reset (it offers: {})",
            offered.join(", ")
        )));
    }
    let mut tried = Vec::new();
    let mut last = String::from("nothing answered");
    for (attempt, (kind, name, wait)) in resets.into_iter().enumerate() {
        if attempt > 0 {
            // The activation is one-shot: when the earlier reset did boot the rescue system (only
            // slower than the wait), it is used up, and a reset without it would boot the disks.
            let rescue = client
                .rescue(server)
                .await
                .map_err(api("reading the rescue state"))?;
            if !rescue.active {
                client
                    .activate_rescue(server, fingerprints)
                    .await
                    .map_err(api("activating the rescue system again"))?;
                tracker.say(
                    context,
                    "the activation was used up by a slow boot: activated the rescue system again",
                );
            }
        }
        tracker.enter(
            context,
            Phase::Connect,
            "rescue",
            format!("{name} reset; waiting up to {wait:?} for the rescue system"),
        );
        // Before the call: a reset whose answer is lost (or cancelled) may still have happened.
        tracker.set_stage(Stage::Resetting);
        client
            .reset(server, kind)
            .await
            .map_err(api(format!("resetting server {server} ({name})")))?;
        if let Some(session) = wait_for_system(
            config,
            context,
            tracker,
            address,
            key,
            wait,
            &Expect::Rescue { client, server },
            &mut last,
        )
        .await?
        {
            tracker.say(
                context,
                format!(
                    "rescue system up at {address}; its host key {} is trusted on first use and pinned for this run",
                    session.host_key().fingerprint()
                ),
            );
            return Ok(session);
        }
        tried.push(format!("{name} reset, waited {wait:?}"));
        tracker.say(
            context,
            format!("no rescue system after the {name} reset within {wait:?}"),
        );
    }
    Err(InstallCause::RescueTimeout {
        resets: tried.join(", then "),
        last,
    })
}

/// Which system a wait expects.
enum Expect<'a> {
    /// The new rescue boot: hostname `rescue`, installimage there, and the activation used up (an
    /// old rescue system still answering would have left it pending).
    Rescue {
        client: &'a RobotClient,
        server: u64,
    },
    /// The installed system: its hostname and a host key other than the rescue system's.
    Installed {
        hostname: &'a str,
        rescue_key: &'a PublicKey,
    },
}

/// Connects until the expected system answers or `wait` passes (`Ok(None)`). Every attempt trusts
/// the host key on first use with a fresh pin, committed only when the system is the expected
/// one, so a system still answering from before the reset cannot poison the pin.
#[allow(clippy::too_many_arguments)]
async fn wait_for_system(
    config: &RobotBackendConfig,
    context: &Context,
    tracker: &Tracker,
    address: SocketAddr,
    key: &KeyPair,
    wait: Duration,
    expect: &Expect<'_>,
    last: &mut String,
) -> Result<Option<Session>, InstallCause> {
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(None);
        }
        let mut connect = ConnectConfig::new(
            address,
            "root",
            key.clone(),
            HostKeyPolicy::TrustOnFirstUse(TofuPin::new()),
        );
        connect.deadline = remaining;
        connect.dial_timeout = config.dial_timeout.min(remaining);
        let attempt = caph_ssh::connect_when_ready(&connect, &mut |event: ConnectEvent<'_>| {
            if let ConnectEvent::Retrying { attempt, error, .. } = event
                && attempt % 10 == 1
            {
                tracker.say(context, format!("waiting for SSH ({error})"));
            }
        })
        .await;
        match attempt {
            Ok(session) => {
                let probe = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    session.exec_capture(&format!(
                        "hostname; if test -x {INSTALLIMAGE_PATH}; then echo installimage=yes; else echo installimage=no; fi"
                    )),
                )
                .await;
                match probe {
                    Ok(Ok(output)) => {
                        let mut lines = output.stdout.lines();
                        let hostname = lines.next().unwrap_or("").trim().to_string();
                        let installimage = lines.next().unwrap_or("").trim() == "installimage=yes";
                        match accept(expect, &session, &hostname, installimage).await? {
                            None => return Ok(Some(session)),
                            Some(why) => *last = why,
                        }
                    }
                    Ok(Err(error)) => *last = error_chain(&error),
                    Err(_) => *last = format!("`hostname` did not answer within {PROBE_TIMEOUT:?}"),
                }
                session.close().await;
            }
            Err(error @ SshError::NotReady { .. }) => {
                *last = error_chain(&error);
                return Ok(None);
            }
            // Another system answering (the one before the reset, or an old rescue): not ours.
            Err(error) => *last = error_chain(&error),
        }
        let pause = config
            .poll_interval
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// `None` when the system is the expected one, else what it is instead.
async fn accept(
    expect: &Expect<'_>,
    session: &Session,
    hostname: &str,
    installimage: bool,
) -> Result<Option<String>, InstallCause> {
    match expect {
        Expect::Rescue { client, server } => {
            if hostname != "rescue" {
                return Ok(Some(format!(
                    "{} answers as \"{hostname}\", not as the rescue system",
                    session.addr()
                )));
            }
            if !installimage {
                return Ok(Some(format!(
                    "the rescue system at {} has no {INSTALLIMAGE_PATH}",
                    session.addr()
                )));
            }
            let rescue = client
                .rescue(*server)
                .await
                .map_err(api("reading the rescue state"))?;
            if rescue.active {
                return Ok(Some(
                    "a rescue system answers, but the activation is still pending: it is an older rescue boot".to_string(),
                ));
            }
            Ok(None)
        }
        Expect::Installed {
            hostname: expected,
            rescue_key,
        } => {
            if hostname != *expected {
                return Ok(Some(format!(
                    "{} answers as \"{hostname}\", not as {expected}",
                    session.addr()
                )));
            }
            if session.host_key().same_key(rescue_key) {
                return Err(InstallCause::Installed(format!(
                    "{expected} presents the rescue system's host key {}; installimage should have made new host keys",
                    rescue_key.fingerprint()
                )));
            }
            Ok(None)
        }
    }
}

/// Runs installimage with `x` on stdin, streaming its output; requires `INSTALLATION COMPLETE`
/// and the post-install marker.
async fn run_installimage(
    config: &RobotBackendConfig,
    context: &Context,
    tracker: &Tracker,
    session: &Session,
) -> Result<(), InstallCause> {
    let command = format!("echo x | {INSTALLIMAGE_PATH} -a -c /autosetup -x {POST_INSTALL_PATH}");
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut errors: Vec<String> = Vec::new();
    let mut complete = false;
    let mut marker = false;
    let mut started_install = false;
    let status = tokio::time::timeout(
        config.install_timeout,
        session.exec(&command, &mut |line: OutputLine<'_>| {
            // installimage shows its config, passphrase and all: filter it as its reports do.
            let text = if line.text.contains("CRYPTPASSWORD") {
                "CRYPTPASSWORD [FILTERED]"
            } else {
                line.text.trim_end()
            };
            let trimmed = text.trim();
            // The 20-second warning comes after validation and before the disks are touched.
            if trimmed.starts_with("Press X to continue")
                || trimmed.contains("Starting installation")
            {
                started_install = true;
                tracker.set_stage(Stage::Installing);
            }
            if trimmed.contains("INSTALLATION COMPLETE") {
                complete = true;
            }
            if trimmed == POST_INSTALL_MARKER {
                marker = true;
            }
            if trimmed.contains("ERROR") || trimmed.contains("FAILED") {
                errors.push(trimmed.to_string());
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.to_string());
            tracker.say(context, text.to_string());
        }),
    )
    .await;
    let tail_text = || {
        tail.iter()
            .map(|line| format!("  {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status = match status {
        Err(_) => {
            return Err(InstallCause::InstallImage {
                how: format!("did not finish within {:?}", config.install_timeout),
                messages: errors.join("\n"),
                tail: tail_text(),
            });
        }
        Ok(result) => result.map_err(ssh("running installimage"))?,
    };
    if status != 0 || !complete {
        // In batch mode installimage writes its reasons to /root/debug.txt and shows little more
        // than "Cancelled." on the terminal: its own words come from there.
        if let Ok(Ok(debug)) = tokio::time::timeout(
            PROBE_TIMEOUT,
            session.exec_capture("grep -E 'ERROR|FAILED|WARNING' /root/debug.txt | tail -n 20"),
        )
        .await
        {
            for line in debug.stdout.lines() {
                let line = line.trim();
                if !line.is_empty() && !errors.iter().any(|seen| line.ends_with(seen.as_str())) {
                    errors.push(line.to_string());
                }
            }
        }
        if !started_install {
            tracker.set_stage(Stage::Rejected);
        }
        return Err(InstallCause::InstallImage {
            how: if started_install {
                format!("failed (exit status {status})")
            } else {
                format!("rejected the config (exit status {status})")
            },
            messages: if errors.is_empty() {
                "  (no error lines; see its output)".to_string()
            } else {
                errors
                    .iter()
                    .map(|line| format!("  {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
            tail: tail_text(),
        });
    }
    if !marker {
        tracker.set_stage(Stage::Installed);
        return Err(InstallCause::MarkerMissing {
            marker: POST_INSTALL_MARKER,
            tail: tail_text(),
        });
    }
    tracker.say(
        context,
        "installimage: INSTALLATION COMPLETE, post-install script finished",
    );
    Ok(())
}

/// `reboot` in the rescue system; a `hw` reset when it is still up after the wait (the
/// activation is used up, so either boots the disks).
async fn reboot(
    client: &RobotClient,
    config: &RobotBackendConfig,
    context: &Context,
    tracker: &Tracker,
    server: u64,
    address: SocketAddr,
    session: Session,
) -> Result<(), InstallCause> {
    match tokio::time::timeout(REBOOT_COMMAND_TIMEOUT, session.exec_capture("reboot")).await {
        Ok(Ok(output)) if output.exit_code == 0 => tracker.say(context, "reboot: accepted"),
        Ok(Ok(output)) => tracker.say(
            context,
            format!(
                "reboot: exit status {}: {}",
                output.exit_code,
                output.stderr.lines().next().unwrap_or("").trim()
            ),
        ),
        // The connection dropping is what a reboot looks like.
        Ok(Err(error)) => tracker.say(context, format!("reboot: {error}")),
        Err(_) => tracker.say(
            context,
            format!("reboot: no answer within {REBOOT_COMMAND_TIMEOUT:?}"),
        ),
    }
    let deadline = Instant::now() + config.reboot_wait;
    let went_down = loop {
        if session.is_closed() {
            break true;
        }
        let dial =
            tokio::time::timeout(config.dial_timeout, tokio::net::TcpStream::connect(address))
                .await;
        if !matches!(dial, Ok(Ok(_))) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(
            config
                .poll_interval
                .min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    };
    session.close().await;
    if went_down {
        tracker.say(context, "the rescue system went down");
    } else {
        tracker.say(
            context,
            format!(
                "the rescue system still answers {:?} after reboot: hw reset",
                config.reboot_wait
            ),
        );
        client
            .reset(server, ResetType::Hardware)
            .await
            .map_err(api(format!("resetting server {server} (hw) after reboot")))?;
    }
    Ok(())
}
