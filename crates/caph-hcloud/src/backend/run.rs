//! One build, per architecture and concurrently: create, connect, provision, shut down, snapshot,
//! commit the name, verify, clean up; and on any error or cancellation, clean up all the same.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caph_core::backend::{Artifact, BackendError, BuildRequest, Context, Phase, ProgressEvent};
use caph_core::plan::{self, BuildStamp, Target};
use caph_core::{Arch, ImageSpec};
use caph_ssh::{ConnectConfig, ConnectEvent, HostKeyPolicy, KeyPair, OutputLine, Session};

use super::commit::{self, CommitError, CommitEvent, NameCommit};
use super::ledger::{self, Ledger, SharedLedger};
use super::lookup::Placements;
use super::naming::{
    self, BuiltOn, final_snapshot_labels, pending_snapshot_labels, snapshot_description,
    temporary_labels, temporary_name,
};
use super::placement::{self, ArchPlacement, Candidate};
use super::{HcloudBackendConfig, cloud_init, lookup};
use crate::client::CreateSshKeyRequest;
use crate::client::{Client, Error as ClientError, SecretString};
use crate::client::{CreateImageRequest, CreateServerRequest};
use crate::client::{IdOrName, ImageId, ImageStatus, ServerId, ServerStatus, SshKeyId};

/// How many of a failing step's last output lines go into the error.
const FAILURE_TAIL_LINES: usize = 20;

/// Why one architecture's build failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchFailure {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// SSH failed.
    #[error("{what}: {source}")]
    Ssh {
        /// What was being done.
        what: String,
        /// The SSH error.
        #[source]
        source: caph_ssh::SshError,
    },
    /// A plan step exited non-zero.
    #[error(
        "step {number}/{count} \"{name}\" exited with status {status}; its last output:\n{tail}"
    )]
    Step {
        /// 1-based step number.
        number: usize,
        /// Steps in the plan.
        count: usize,
        /// The step's name.
        name: String,
        /// Its exit status.
        status: u32,
        /// Its last output lines, indented.
        tail: String,
    },
    /// No preferred (server type, location) pair could take the server.
    #[error("no preferred server type could be created in a preferred location: {}; add locations to hcloud.locations or types to hcloud.server_types, or try later", .tried.join("; "))]
    NoCapacity {
        /// Each pair tried or skipped, with the reason: `cx23 in fsn1: sold out`.
        tried: Vec<String>,
    },
    /// The result is not what CAPH needs.
    #[error("{0}")]
    Verify(String),
    /// Key generation failed.
    #[error("generating keys: {0}")]
    Keys(#[from] caph_ssh::KeyError),
    /// The plan refused a value (one that validation lets through never gets here).
    #[error("rendering the plan: {0}")]
    Plan(#[from] caph_core::text::UnsafeLine),
    /// Naming the snapshot (and replacing the old one) failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(ClientError) -> ArchFailure {
    let what = what.into();
    move |source| ArchFailure::Api { what, source }
}

pub(crate) fn ssh(what: impl Into<String>) -> impl FnOnce(caph_ssh::SshError) -> ArchFailure {
    let what = what.into();
    move |source| ArchFailure::Ssh { what, source }
}

/// Shared state of one architecture's build: where it is, and what it made.
pub(crate) struct Tracker {
    arch: Arch,
    phase: Mutex<Phase>,
    pub(crate) ledger: SharedLedger,
    pub(crate) started: Instant,
    /// How to reach the server, for `--keep-on-error`.
    access: Mutex<Option<Access>>,
}

/// The address and keys of a build server.
#[derive(Clone)]
pub(crate) struct Access {
    address: SocketAddr,
    client_key: KeyPair,
    host_key_line: String,
}

impl Tracker {
    pub(crate) fn enter(&self, context: &Context, phase: Phase, detail: impl Into<String>) {
        match self.phase.lock() {
            Ok(mut guard) => *guard = phase,
            Err(poisoned) => *poisoned.into_inner() = phase,
        }
        context.progress.event(ProgressEvent::Phase {
            scope: self.arch.to_string(),
            phase,
            detail: detail.into(),
        });
    }

    fn phase(&self) -> Phase {
        match self.phase.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The architecture this unit of work is for.
    pub(crate) fn arch(&self) -> Arch {
        self.arch
    }

    pub(crate) fn say(&self, context: &Context, line: impl Into<String>) {
        context.progress.event(ProgressEvent::Output {
            scope: self.arch.to_string(),
            line: line.into(),
        });
    }
}

/// The outcome of one unit of work (an architecture's build, an upload, a verification): what it
/// made, or how it failed.
pub(crate) enum ArchOutcome<T = Artifact> {
    Built(T),
    Failed {
        phase: Phase,
        failure: ArchFailure,
        kept: Option<ServerId>,
        cleanup: Vec<String>,
    },
    Cancelled {
        phase: Phase,
        cleanup: Vec<String>,
    },
}

/// Builds every requested architecture concurrently, then sweeps what still carries the build label.
pub(crate) async fn build_all(
    client: &Client,
    config: &Arc<HcloudBackendConfig>,
    context: &Context,
    request: &BuildRequest,
    placements: &Placements,
) -> Result<Vec<Artifact>, BackendError> {
    let builds = request.architectures.iter().map(|arch| {
        let placement = placements.get(arch).cloned().unwrap_or_default();
        build_arch(client, config, context, request, *arch, placement)
    });
    let outcomes = futures_util::future::join_all(builds).await;
    finish_all(
        client,
        config,
        context,
        &format!("the build of {}", request.spec.image.name),
        &request.architectures,
        outcomes,
        |artifact| format!("{} snapshot {}", artifact.arch, artifact.id),
    )
    .await
}

/// One unit of work that is not a build of architectures (an upload, a build from a tarball):
/// supervised as a build's architecture is, then the sweep; its artifact, or the error naming
/// `work_name` and the cleanup.
pub(crate) async fn run_one(
    job: &Job<'_>,
    keep_on_error: bool,
    work_name: &str,
    work: impl Future<Output = Result<Artifact, ArchFailure>>,
) -> Result<Artifact, BackendError> {
    let (client, config, context, tracker) = (job.client, job.config, job.context, job.tracker);
    let outcome = supervise(client, config, context, tracker, keep_on_error, work).await;
    let mut artifacts = finish_all(
        client,
        config,
        context,
        work_name,
        &[tracker.arch],
        vec![outcome],
        |artifact| format!("{} snapshot {}", artifact.arch, artifact.id),
    )
    .await?;
    artifacts.pop().ok_or_else(|| BackendError::Failed {
        context: format!("{work_name} made no snapshot"),
        source: "no artifact".into(),
    })
}

/// Sweeps what still carries the build label and turns the units' outcomes into the result:
/// the artifacts, or an error naming each failure and its cleanup.
pub(crate) async fn finish_all<T>(
    client: &Client,
    config: &HcloudBackendConfig,
    context: &Context,
    work: &str,
    architectures: &[Arch],
    outcomes: Vec<ArchOutcome<T>>,
    describe: impl Fn(&T) -> String,
) -> Result<Vec<T>, BackendError> {
    // Layer two: whatever still carries this build's label (a create whose answer was lost, say)
    // goes too, except servers kept on purpose. It runs even after cancellation, bounded in time.
    let kept: Vec<ServerId> = outcomes
        .iter()
        .filter_map(|outcome| {
            if let ArchOutcome::Failed { kept, .. } = outcome {
                *kept
            } else {
                None
            }
        })
        .collect();
    let sweep = tokio::time::timeout(
        config.cleanup_timeout,
        ledger::sweep(
            client,
            config,
            Some(&context.build_id),
            Duration::ZERO,
            &kept,
            false,
        ),
    )
    .await;
    let sweep_lines = match sweep {
        Ok(Ok(lines)) => lines,
        Ok(Err(error)) => vec![format!(
            "the final sweep failed: {error}; run `caph-image gc` to finish"
        )],
        Err(_) => vec!["the final sweep timed out; run `caph-image gc` to finish".to_string()],
    };
    for line in &sweep_lines {
        context.progress.event(ProgressEvent::Output {
            scope: "cleanup".to_string(),
            line: line.clone(),
        });
    }

    let mut artifacts = Vec::new();
    let mut failures = Vec::new();
    let mut cancelled_phase = None;
    let mut cancel_cleanup = Vec::new();
    for (arch, outcome) in architectures.iter().zip(outcomes) {
        match outcome {
            ArchOutcome::Built(artifact) => artifacts.push(artifact),
            ArchOutcome::Failed {
                phase,
                failure,
                kept,
                cleanup,
            } => {
                let mut text = format!("{arch}: {} failed: {failure}", phase.name());
                if let Some(server) = kept {
                    text.push_str(&format!("\n{arch}: server {server} and its SSH key were kept (--keep-on-error); remove them with `caph-image gc` when done"));
                }
                for line in &cleanup {
                    text.push_str(&format!("\n{arch}: cleanup: {line}"));
                }
                failures.push(text);
            }
            ArchOutcome::Cancelled { phase, cleanup } => {
                cancelled_phase.get_or_insert(phase.name());
                cancel_cleanup.push(format!(
                    "{arch}: {}",
                    if cleanup.is_empty() {
                        "nothing to clean".to_string()
                    } else {
                        cleanup.join("; ")
                    }
                ));
            }
        }
    }
    if let Some(phase) = cancelled_phase {
        let mut cleanup = cancel_cleanup.join("; ");
        cleanup.push_str(&format!(
            "; sweep: {}",
            if sweep_lines.is_empty() {
                "nothing left".to_string()
            } else {
                sweep_lines.join("; ")
            }
        ));
        return Err(BackendError::Cancelled { phase, cleanup });
    }
    if !failures.is_empty() {
        let built: Vec<String> = artifacts.iter().map(describe).collect();
        let mut report = failures.join("\n");
        if !built.is_empty() {
            report.push_str(&format!("\nbuilt anyway: {}", built.join(", ")));
        }
        let failed = failures.len();
        let requested = architectures.len();
        return Err(BackendError::Failed {
            context: format!("{work} failed for {failed} of {requested} architecture(s)"),
            source: report.into(),
        });
    }
    Ok(artifacts)
}

async fn build_arch(
    client: &Client,
    config: &Arc<HcloudBackendConfig>,
    context: &Context,
    request: &BuildRequest,
    arch: Arch,
    placement: ArchPlacement,
) -> ArchOutcome {
    let tracker = Tracker::new(arch);
    let work = run_arch(client, config, context, request, &tracker, &placement);
    supervise(
        client,
        config,
        context,
        &tracker,
        request.keep_on_error,
        work,
    )
    .await
}

impl Tracker {
    pub(crate) fn new(arch: Arch) -> Arc<Tracker> {
        Arc::new(Tracker {
            arch,
            phase: Mutex::new(Phase::Create),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            started: Instant::now(),
            access: Mutex::new(None),
        })
    }
}

/// Runs one unit of work (an architecture's build, an upload) until it ends or the context is
/// cancelled, then cleans up what its ledger holds unless it succeeded (or, with
/// `keep_on_error`, keeps the server for debugging).
pub(crate) async fn supervise<T>(
    client: &Client,
    config: &HcloudBackendConfig,
    context: &Context,
    tracker: &Tracker,
    keep_on_error: bool,
    work: impl Future<Output = Result<T, ArchFailure>>,
) -> ArchOutcome<T> {
    let arch = tracker.arch;
    // Layer one: on cancellation the work future is dropped wherever it waits; the ledger it
    // filled survives it, and cleanup runs from here.
    let result = tokio::select! {
        result = work => Some(result),
        () = context.cancel.cancelled() => None,
    };
    let phase = tracker.phase();
    match result {
        Some(Ok(artifact)) => ArchOutcome::Built(artifact),
        Some(Err(failure)) => {
            let held = ledger::snapshot(&tracker.ledger);
            if keep_on_error && let Some(server) = held.server {
                // Keep the server and key, but never an unfinished snapshot.
                let image_only = Ledger {
                    pending_image: held.pending_image,
                    ..Ledger::default()
                };
                let mut cleanup = clean_bounded(client, config, &image_only).await;
                // A server kept for debugging is no use switched off (a failure after the shutdown).
                if let Some(line) = power_on_if_off(client, config, server).await {
                    cleanup.push(line);
                }
                let access = tracker
                    .access
                    .lock()
                    .map(|guard| guard.clone())
                    .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
                match access {
                    Some(access) => {
                        cleanup.push(write_access(config, &context.build_id, arch, &access))
                    }
                    None => cleanup.push(
                        "the server never got an address, so there is nothing to log in to"
                            .to_string(),
                    ),
                }
                return ArchOutcome::Failed {
                    phase,
                    failure,
                    kept: Some(server),
                    cleanup,
                };
            }
            tracker.enter(context, Phase::Cleanup, "after a failure");
            let cleanup = clean_bounded(client, config, &held).await;
            ArchOutcome::Failed {
                phase,
                failure,
                kept: None,
                cleanup,
            }
        }
        None => {
            tracker.enter(context, Phase::Cleanup, "after cancellation");
            let cleanup = clean_bounded(client, config, &ledger::snapshot(&tracker.ledger)).await;
            ArchOutcome::Cancelled { phase, cleanup }
        }
    }
}

/// Powers a kept server back on when it is off; says what it did, or why it could not.
async fn power_on_if_off(
    client: &Client,
    config: &HcloudBackendConfig,
    server: ServerId,
) -> Option<String> {
    let work = async {
        let status = client.get_server(server).await?.status;
        if status != ServerStatus::Off {
            return Ok(None);
        }
        let action = client.poweron_server(server).await?;
        client
            .wait_for_action(&action, &config.wait, &mut |_| {})
            .await?;
        client
            .wait_for_server_status(server, &ServerStatus::Running, &config.wait, &mut |_| {})
            .await?;
        Ok::<_, ClientError>(Some(format!("powered server {server} back on")))
    };
    match tokio::time::timeout(config.cleanup_timeout, work).await {
        Ok(Ok(line)) => line,
        Ok(Err(error)) => Some(format!("could not power server {server} back on: {error}")),
        Err(_) => Some(format!(
            "could not power server {server} back on in {:?}",
            config.cleanup_timeout
        )),
    }
}

/// Writes the key and a known_hosts line of a kept server beside each other (mode 0600, since the
/// user asked for them) and says how to log in.
fn write_access(
    config: &HcloudBackendConfig,
    build_id: &str,
    arch: Arch,
    access: &Access,
) -> String {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let stem = config.keep_dir.join(temporary_name(build_id, arch));
    let key_path = stem.with_extension("key");
    let hosts_path = stem.with_extension("known_hosts");
    let write = |path: &std::path::Path, text: &str| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())
    };
    let pem = match access.client_key.private_key_openssh() {
        Ok(pem) => pem,
        Err(error) => return format!("could not export the key to reach the kept server: {error}"),
    };
    let host = if access.address.port() == 22 {
        access.address.ip().to_string()
    } else {
        format!("[{}]:{}", access.address.ip(), access.address.port())
    };
    if let Err(error) = write(&key_path, pem.expose())
        .and_then(|()| write(&hosts_path, &format!("{host} {}\n", access.host_key_line)))
    {
        return format!(
            "could not write the key of the kept server to {}: {error}",
            key_path.display()
        );
    }
    format!(
        "reach the kept server with: ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -p {} root@{}",
        key_path.display(),
        hosts_path.display(),
        access.address.port(),
        access.address.ip()
    )
}

async fn clean_bounded(
    client: &Client,
    config: &HcloudBackendConfig,
    held: &Ledger,
) -> Vec<String> {
    match tokio::time::timeout(config.cleanup_timeout, ledger::clean(client, config, held)).await {
        Ok(lines) => lines,
        Err(_) => vec![format!(
            "cleanup timed out after {:?}; run `caph-image gc` to finish",
            config.cleanup_timeout
        )],
    }
}

/// One architecture's build, phase by phase; each method is one phase of [`Phase`], in order.
struct ArchBuild<'a> {
    client: &'a Client,
    config: &'a HcloudBackendConfig,
    context: &'a Context,
    tracker: &'a Tracker,
    spec: &'a ImageSpec,
    /// The (server type, location) pairs to try, in order.
    placement: &'a ArchPlacement,
}

/// The build server once it runs: its id, where SSH listens, the keys made for it, and where it
/// was made.
struct BuildServer {
    id: ServerId,
    address: SocketAddr,
    client_key: KeyPair,
    host_key: KeyPair,
    built_on: BuiltOn,
    /// Preferred pairs passed over, with the reason: `cx23 in fsn1: sold out`.
    passed_over: Vec<String>,
}

/// A server created on one of the preferred pairs.
pub(crate) struct CreatedServer {
    pub(crate) id: ServerId,
    pub(crate) address: SocketAddr,
    /// The pair it was created on.
    pub(crate) candidate: Candidate,
    /// Preferred pairs passed over, with the reason: `cx23 in fsn1: sold out`.
    pub(crate) passed_over: Vec<String>,
}

/// Why one create attempt did not give a running server.
pub(crate) enum CreateAttempt {
    /// The pair has no capacity now: try the next one.
    NoCapacity(String),
    /// Anything else ends the build.
    Failed(ArchFailure),
}

/// `resource_unavailable: error during placement`, from a create refused or a create action failed.
pub(crate) fn capacity_reason(error: &ClientError) -> String {
    match error {
        ClientError::Api(api) => match &api.code {
            Some(code) => format!("{code}: {}", api.message),
            None => api.message.clone(),
        },
        ClientError::ActionFailed { code, message, .. } => format!("{code}: {message}"),
        other => other.to_string(),
    }
}

async fn run_arch(
    client: &Client,
    config: &HcloudBackendConfig,
    context: &Context,
    request: &BuildRequest,
    tracker: &Tracker,
    placement: &ArchPlacement,
) -> Result<Artifact, ArchFailure> {
    let spec: &ImageSpec = &request.spec;
    let build = ArchBuild {
        client,
        config,
        context,
        tracker,
        spec,
        placement,
    };
    let server = build.create_server().await?;
    let session = build.connect(&server).await?;
    build.provision(&server, &session).await?;
    session.close().await;
    let job = Job {
        client,
        config,
        context,
        tracker,
    };
    job.shut_down(server.id).await?;
    let arch = tracker.arch;
    let image = job
        .capture(
            server.id,
            snapshot_description(spec, arch),
            pending_snapshot_labels(spec, arch, &context.build_id, &server.built_on),
        )
        .await?;
    job.commit_name(
        image.id,
        &spec.image.name,
        final_snapshot_labels(spec, arch, &context.build_id, &server.built_on),
        request.replace,
    )
    .await?;
    job.clean_up(server.id).await?;
    tracker.enter(context, Phase::Done, format!("snapshot {}", image.id));

    let mut artifact = lookup::artifact_of(image).ok_or_else(|| {
        ArchFailure::Verify("the snapshot has an unknown architecture".to_string())
    })?;
    artifact.name = spec.image.name.clone();
    artifact.labels =
        final_snapshot_labels(spec, tracker.arch, &context.build_id, &server.built_on);
    artifact.duration = Some(tracker.started.elapsed());
    artifact.notes.push(format!(
        "built on {} in {}",
        server.built_on.server_type, server.built_on.location
    ));
    for reason in &server.passed_over {
        artifact.notes.push(format!("passed over {reason}"));
    }
    Ok(artifact)
}

impl ArchBuild<'_> {
    /// Create: keys in memory, the client key at the API, the host key through cloud-init; then
    /// the server, waited for until it runs.
    async fn create_server(&self) -> Result<BuildServer, ArchFailure> {
        let (client, context, tracker) = (self.client, self.context, self.tracker);
        let arch = tracker.arch;
        let name = temporary_name(&context.build_id, arch);
        tracker.enter(context, Phase::Create, format!("server {name}"));
        let client_key =
            KeyPair::generate_ed25519(&format!("caph-image build {}", context.build_id))?;
        let host_key = KeyPair::generate_ed25519(&format!("caph-image host {}", context.build_id))?;
        let job = Job {
            client,
            config: self.config,
            context,
            tracker,
        };
        let ssh_key = job.create_temporary_key(&name, &client_key).await?;

        let base_image = self
            .spec
            .base
            .hcloud_images
            .get(&arch)
            .cloned()
            .unwrap_or_default();
        let user_data = SecretString::new(cloud_init::host_key_user_data(&host_key)?);
        // Preferred pairs preflight found unorderable count as tried: an error lists them all.
        let created = job
            .create_on_candidates(
                &self.placement.candidates,
                ServerStatus::Running,
                self.placement.skipped.clone(),
                |candidate| {
                    let mut create = job.server_request(
                        &name,
                        IdOrName::Name(base_image.clone()),
                        candidate,
                        ssh_key,
                    );
                    create.user_data = Some(user_data.clone());
                    create
                },
            )
            .await?;
        let access = Access {
            address: created.address,
            client_key: client_key.clone(),
            host_key_line: host_key.public_key().to_openssh(),
        };
        match tracker.access.lock() {
            Ok(mut guard) => *guard = Some(access),
            Err(poisoned) => *poisoned.into_inner() = Some(access),
        }
        let candidate = &created.candidate;
        let first = &self.placement.candidates[0];
        if candidate.disk_gb > first.disk_gb {
            context.progress.event(ProgressEvent::Warning {
                scope: arch.to_string(),
                message: format!(
                    "built on {}: the snapshot's disk is {} GB, so it will not fit {} ({} GB)",
                    candidate.server_type, candidate.disk_gb, first.server_type, first.disk_gb
                ),
            });
        }
        Ok(BuildServer {
            id: created.id,
            address: created.address,
            client_key,
            host_key,
            built_on: BuiltOn {
                server_type: candidate.server_type.clone(),
                location: candidate.location.clone(),
            },
            passed_over: created.passed_over,
        })
    }

    /// Connect, pinning the host key we generated.
    async fn connect(&self, server: &BuildServer) -> Result<Session, ArchFailure> {
        let job = Job {
            client: self.client,
            config: self.config,
            context: self.context,
            tracker: self.tracker,
        };
        job.connect_pinned(server.address, &server.client_key, &server.host_key)
            .await
    }

    /// Provision: the same plan the tarball target runs.
    async fn provision(&self, server: &BuildServer, session: &Session) -> Result<(), ArchFailure> {
        let plan = plan::render(self.spec, Target::Hcloud, self.tracker.arch)?;
        let stamp = BuildStamp {
            build_id: self.context.build_id.clone(),
            build_time: naming::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            ),
            builder: self.config.builder.clone(),
            build_public_key: Some(server.client_key.public_key().to_openssh()),
        };
        run_plan(session, &plan, &stamp, self.context, self.tracker).await
    }
}

/// What every unit of work shares: the API, the timeouts, progress and its ledger.
pub(crate) struct Job<'a> {
    pub(crate) client: &'a Client,
    pub(crate) config: &'a HcloudBackendConfig,
    pub(crate) context: &'a Context,
    pub(crate) tracker: &'a Tracker,
}

impl Job<'_> {
    /// One create on one (type, location) pair, waited for until the server is `wanted`; a pair without
    /// capacity, whether the API refuses the create or its action fails, leaves no server.
    pub(crate) async fn create_on(
        &self,
        create: &CreateServerRequest,
        wanted: ServerStatus,
    ) -> Result<(ServerId, SocketAddr), CreateAttempt> {
        let (client, context, tracker) = (self.client, self.context, self.tracker);
        let created = match client.create_server(create).await {
            Ok(created) => created,
            Err(error) if placement::is_capacity_error(&error) => {
                return Err(CreateAttempt::NoCapacity(capacity_reason(&error)));
            }
            Err(error) => {
                return Err(CreateAttempt::Failed(api("creating the build server")(
                    error,
                )));
            }
        };
        let server_id = created.server.id;
        ledger::update(&tracker.ledger, |ledger| ledger.server = Some(server_id));
        tracker.say(
            context,
            format!("server {server_id} created; waiting for it to run"),
        );
        let mut wait = self.config.wait.clone();
        wait.timeout = self.config.server_ready_timeout;
        if let Err(error) = client
            .wait_for_actions(&created.all_actions(), &wait, &mut |_| {})
            .await
        {
            if !placement::is_capacity_error(&error) {
                return Err(CreateAttempt::Failed(api(
                    "waiting for the build server to start",
                )(error)));
            }
            // The server exists but was never placed: it goes before the next pair is tried,
            // which also frees its name.
            let held = Ledger {
                server: Some(server_id),
                ..Ledger::default()
            };
            for line in ledger::clean(client, self.config, &held).await {
                if line.starts_with("could not") {
                    return Err(CreateAttempt::Failed(ArchFailure::Verify(line)));
                }
                tracker.say(context, line);
            }
            ledger::update(&tracker.ledger, |ledger| ledger.server = None);
            return Err(CreateAttempt::NoCapacity(capacity_reason(&error)));
        }
        let server = client
            .wait_for_server_status(server_id, &wanted, &wait, &mut |_| {})
            .await
            .map_err(|error| {
                CreateAttempt::Failed(api("waiting for the build server to run")(error))
            })?;
        let address = SocketAddr::new(
            server
                .public_net
                .ipv4
                .as_ref()
                .map(|ipv4| std::net::IpAddr::V4(ipv4.ip))
                .ok_or_else(|| {
                    CreateAttempt::Failed(ArchFailure::Verify(format!(
                        "server {server_id} has no public IPv4 address"
                    )))
                })?,
            self.config.ssh_port,
        );
        Ok((server_id, address))
    }

    /// The run's temporary SSH key at the API (`name`, the run's label), in the ledger before
    /// anything else happens.
    pub(crate) async fn create_temporary_key(
        &self,
        name: &str,
        key: &KeyPair,
    ) -> Result<SshKeyId, ArchFailure> {
        let ssh_key = self
            .client
            .create_ssh_key(&CreateSshKeyRequest {
                name: name.to_string(),
                public_key: key.public_key().to_openssh(),
                labels: temporary_labels(&self.context.build_id),
            })
            .await
            .map_err(api("creating the temporary SSH key"))?;
        ledger::update(&self.tracker.ledger, |ledger| {
            ledger.ssh_key = Some(ssh_key.id)
        });
        Ok(ssh_key.id)
    }

    /// The create request of a temporary server `name` from `image` on `candidate`, reached
    /// with `ssh_key` and labelled with the run's label.
    pub(crate) fn server_request(
        &self,
        name: &str,
        image: IdOrName,
        candidate: &Candidate,
        ssh_key: SshKeyId,
    ) -> CreateServerRequest {
        let mut create = CreateServerRequest::new(
            name.to_string(),
            IdOrName::Name(candidate.server_type.clone()),
            image,
        );
        create.location = Some(IdOrName::Name(candidate.location.clone()));
        create.ssh_keys = vec![IdOrName::Id(ssh_key.0)];
        create.labels = temporary_labels(&self.context.build_id);
        create
    }

    /// Connects as root with `client_key`, pinning `host_key` (the one given to the server
    /// through its user data), retrying until the server answers.
    pub(crate) async fn connect_pinned(
        &self,
        address: SocketAddr,
        client_key: &KeyPair,
        host_key: &KeyPair,
    ) -> Result<Session, ArchFailure> {
        let (context, tracker) = (self.context, self.tracker);
        tracker.enter(
            context,
            Phase::Connect,
            format!("{address}, host key {}", host_key.fingerprint()),
        );
        let mut connect = ConnectConfig::new(
            address,
            "root",
            client_key.clone(),
            HostKeyPolicy::Pinned(host_key.public_key()),
        );
        connect.deadline = self.config.connect_deadline;
        caph_ssh::connect_when_ready(&connect, &mut |event: ConnectEvent<'_>| {
            if let ConnectEvent::Retrying { attempt, error, .. } = event
                && attempt % 5 == 1
            {
                tracker.say(context, format!("waiting for SSH ({error})"));
            }
        })
        .await
        .map_err(ssh(format!("connecting to {address}")))
    }

    /// Creates the server on the first (type, location) pair of `candidates` that has room,
    /// moving on after a capacity error with a warning; `request_for` makes the create request
    /// for a pair. `passed_over` starts with pairs skipped before (preflight's), and the result
    /// or the error lists every pair passed over with the reason.
    pub(crate) async fn create_on_candidates(
        &self,
        candidates: &[Candidate],
        wanted: ServerStatus,
        mut passed_over: Vec<String>,
        request_for: impl Fn(&Candidate) -> CreateServerRequest,
    ) -> Result<CreatedServer, ArchFailure> {
        let (context, tracker) = (self.context, self.tracker);
        for (index, candidate) in candidates.iter().enumerate() {
            tracker.say(context, format!("creating the server on {candidate}"));
            match self
                .create_on(&request_for(candidate), wanted.clone())
                .await
            {
                Ok((id, address)) => {
                    return Ok(CreatedServer {
                        id,
                        address,
                        candidate: candidate.clone(),
                        passed_over,
                    });
                }
                Err(CreateAttempt::NoCapacity(reason)) => {
                    let next = match candidates.get(index + 1) {
                        Some(next) => format!("trying {next}"),
                        None => "no preferred pair is left".to_string(),
                    };
                    context.progress.event(ProgressEvent::Warning {
                        scope: tracker.arch.to_string(),
                        message: format!("{candidate}: {reason}; {next}"),
                    });
                    passed_over.push(format!("{candidate}: {reason}"));
                }
                Err(CreateAttempt::Failed(failure)) => return Err(failure),
            }
        }
        Err(ArchFailure::NoCapacity { tried: passed_over })
    }

    /// Shut down and wait until really off; fall back to a hard poweroff.
    pub(crate) async fn shut_down(&self, server_id: ServerId) -> Result<(), ArchFailure> {
        let (client, config, context) = (self.client, self.config, self.context);
        self.tracker
            .enter(context, Phase::Shutdown, "ACPI shutdown");
        let action = client
            .shutdown_server(server_id)
            .await
            .map_err(api("shutting down"))?;
        client
            .wait_for_action(&action, &config.wait, &mut |_| {})
            .await
            .map_err(api("waiting for the shutdown action"))?;
        let mut off_wait = config.wait.clone();
        off_wait.timeout = config.shutdown_timeout;
        match client
            .wait_for_server_status(server_id, &ServerStatus::Off, &off_wait, &mut |_| {})
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::ServerStatusTimeout { .. }) => {
                context.progress.event(ProgressEvent::Warning {
                    scope: self.tracker.arch.to_string(),
                    message: format!(
                        "not off {:?} after the ACPI shutdown; powering off",
                        config.shutdown_timeout
                    ),
                });
                self.hard_power_off(server_id).await
            }
            Err(error) => Err(api("waiting for the server to be off")(error)),
        }
    }

    /// Powers the server off hard (no ACPI) and waits until it is off.
    pub(crate) async fn hard_power_off(&self, server_id: ServerId) -> Result<(), ArchFailure> {
        let (client, config) = (self.client, self.config);
        let action = client
            .poweroff_server(server_id)
            .await
            .map_err(api("powering off"))?;
        client
            .wait_for_action(&action, &config.wait, &mut |_| {})
            .await
            .map_err(api("waiting for the poweroff"))?;
        client
            .wait_for_server_status(server_id, &ServerStatus::Off, &config.wait, &mut |_| {})
            .await
            .map_err(api("waiting for the server to be off"))?;
        Ok(())
    }

    /// Snapshot, under a pending name so CAPH does not see it yet; returns it once available.
    pub(crate) async fn capture(
        &self,
        server_id: ServerId,
        description: String,
        labels: crate::client::Labels,
    ) -> Result<crate::client::Image, ArchFailure> {
        let (client, context, tracker) = (self.client, self.context, self.tracker);
        tracker.enter(context, Phase::Capture, "create_image");
        let created_image = client
            .create_image(
                server_id,
                &CreateImageRequest {
                    description: Some(description),
                    labels,
                },
            )
            .await
            .map_err(api("creating the snapshot"))?;
        let image_id = created_image.image.id;
        ledger::update(&tracker.ledger, |ledger| {
            ledger.pending_image = Some(image_id)
        });
        let mut image_wait = self.config.wait.clone();
        image_wait.timeout = self.config.image_timeout;
        let mut last_percent = 0;
        client
            .wait_for_action(&created_image.action, &image_wait, &mut |progress| {
                if progress.progress >= last_percent + 10 || progress.progress == 100 {
                    last_percent = progress.progress;
                    tracker.say(
                        context,
                        format!("snapshot {image_id}: {}%", progress.progress),
                    );
                }
            })
            .await
            .map_err(api("waiting for the snapshot"))?;
        wait_until_available(client, image_id, &image_wait).await
    }

    /// Commit: the available snapshot takes the name, with --replace the old one is deleted
    /// right after (one request in which CAPH finds both, never none), and CAPH's own query
    /// must find exactly the new one (`commit::commit_name`). Builds and uploads share it.
    pub(crate) async fn commit_name(
        &self,
        image_id: ImageId,
        name: &str,
        labels: crate::client::Labels,
        replace: bool,
    ) -> Result<(), ArchFailure> {
        let (context, tracker) = (self.context, self.tracker);
        let arch = tracker.arch;
        tracker.enter(context, Phase::Verify, "naming the snapshot");
        // The new snapshot takes the name, then (--replace) the old one goes; `commit` says why
        // in this order. The ledger keeps the new snapshot until the old one is gone.
        let commit = NameCommit {
            name,
            arch,
            image: image_id,
            labels,
            replace,
        };
        commit::commit_name(self.client, &commit, &mut |event| match event {
            CommitEvent::Named(_) => {}
            CommitEvent::Replaced(old) => {
                tracker.say(context, format!("deleted the replaced snapshot {old}"))
            }
            CommitEvent::Committed(_) => {
                ledger::update(&tracker.ledger, |ledger| ledger.pending_image = None)
            }
        })
        .await?;
        tracker.say(
            context,
            format!("CAPH's lookup finds exactly snapshot {image_id}"),
        );
        Ok(())
    }

    /// Clean up the temporary server and key; the ledger is empty afterwards.
    pub(crate) async fn clean_up(&self, server_id: ServerId) -> Result<(), ArchFailure> {
        let (context, tracker) = (self.context, self.tracker);
        tracker.enter(context, Phase::Cleanup, format!("server {server_id}"));
        let held = ledger::snapshot(&tracker.ledger);
        for line in ledger::clean(self.client, self.config, &held).await {
            if line.starts_with("could not") {
                return Err(ArchFailure::Verify(line));
            }
            tracker.say(context, line);
        }
        ledger::update(&tracker.ledger, |ledger| *ledger = Ledger::default());
        Ok(())
    }
}

async fn wait_until_available(
    client: &Client,
    image_id: ImageId,
    wait: &crate::client::WaitOptions,
) -> Result<crate::client::Image, ArchFailure> {
    let started = Instant::now();
    let mut poll = 0;
    loop {
        let image = client
            .get_image(image_id)
            .await
            .map_err(api("checking the snapshot"))?;
        match image.status {
            ImageStatus::Available => return Ok(image),
            ImageStatus::Creating if started.elapsed() < wait.timeout => {}
            status => {
                return Err(ArchFailure::Verify(format!(
                    "snapshot {image_id} is {status} after {:?}",
                    started.elapsed()
                )));
            }
        }
        tokio::time::sleep(wait.schedule.delay(poll)).await;
        poll += 1;
    }
}

/// Runs each step as its own script (see [`run_step`]), stopping at the first that fails.
async fn run_plan(
    session: &Session,
    plan: &plan::Plan,
    stamp: &BuildStamp,
    context: &Context,
    tracker: &Tracker,
) -> Result<(), ArchFailure> {
    let count = plan.steps.len();
    let exports = stamp.exports();
    for (index, step) in plan.steps.iter().enumerate() {
        let script = format!("{exports}{}", step.to_script());
        run_step(
            session,
            (index + 1, count),
            &step.name,
            &script,
            context,
            tracker,
        )
        .await?;
    }
    Ok(())
}

/// Runs one step, number `of.0` of `of.1`: written to a temporary file and run with stdin from
/// /dev/null, so that commands in a step cannot eat the rest of the script. Its output goes to
/// progress; a non-zero exit is an error with the last lines.
pub(crate) async fn run_step(
    session: &Session,
    of: (usize, usize),
    name: &str,
    script: &str,
    context: &Context,
    tracker: &Tracker,
) -> Result<(), ArchFailure> {
    const RUNNER: &str = "f=$(mktemp /root/.caph-step.XXXXXX) && cat > \"$f\" && bash \"$f\" < /dev/null; status=$?; rm -f \"$f\"; exit $status";
    let (number, count) = of;
    tracker.enter(
        context,
        Phase::Provision,
        format!("step {number}/{count}: {name}"),
    );
    let mut tail: VecDeque<String> = VecDeque::with_capacity(FAILURE_TAIL_LINES);
    let scope = tracker.arch.to_string();
    let status = session
        .exec_with_stdin(RUNNER, script.as_bytes(), &mut |line: OutputLine<'_>| {
            if tail.len() == FAILURE_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.text.to_string());
            context.progress.event(ProgressEvent::Output {
                scope: scope.clone(),
                line: line.text.to_string(),
            });
        })
        .await
        .map_err(ssh(format!("running step {number}/{count} \"{name}\"")))?;
    if status != 0 {
        let tail = tail
            .iter()
            .map(|line| format!("  | {line}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ArchFailure::Step {
            number,
            count,
            name: name.to_string(),
            status,
            tail,
        });
    }
    Ok(())
}
