//! `verify`: a throwaway server created from an image with probe user data, its first boot
//! checked over SSH as Cluster API Provider Hetzner would meet it, and the server deleted.
//!
//! The image is found as CAPH finds `imageName` (the `caph-image-name` label, or a system image
//! of that name, of the architecture), or by id; one that does not exist, or that CAPH would
//! find twice, is refused before anything is created. Then, as one unit of work with the
//! build's ledger, label and cleanup (so `gc` covers a killed run): a temporary SSH key and a
//! server from the image on the first preferred (type, location) pair with room, whose user data
//! is the probe ([`caph_core::firstboot::probe_user_data`]) plus an SSH host key made here, so
//! that the connection is pinned to it as a build's is. Over SSH, `cloud-init status` is polled
//! as CAPH polls it until cloud-init is no longer running; then the first-boot evidence and the
//! node checks the image promises are read in one session each and judged. The server and key
//! are deleted afterwards, also on errors and cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caph_core::Arch;
use caph_core::backend::{BackendError, Context, Phase, ProgressEvent};
use caph_core::checks::{self, Finding, FindingStatus, NodePromise};
use caph_core::firstboot::{self, Evidence, Expectations, HostKeys, MachineId};
use caph_core::plan::{MODULES_CONFIG_PATH, RELEASE_PATH, SYSCTL_CONFIG_PATH};
use caph_ssh::{KeyPair, Session};

use super::naming::temporary_name;
use super::placement;
use super::run::{self, ArchFailure, Job, Tracker, ssh};
use super::{HcloudBackend, HcloudBackendConfig, cloud_init, lookup};
use crate::client::{
    Architecture, Client, IdOrName, Image, ImageId, ImageStatus, SecretString, ServerStatus,
};

/// How often `cloud-init status` is asked while it runs (CAPH asks at every reconcile).
const STATUS_POLL: Duration = Duration::from_secs(5);
/// How often progress says it is still waiting.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);
/// root's authorized keys, where a build's key must not have stayed.
const AUTHORIZED_KEYS_PATH: &str = "/root/.ssh/authorized_keys";

/// Which image to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// By id.
    Id(i64),
    /// By name, as CAPH's `imageName`.
    Name(String),
}

impl ImageRef {
    /// An id when `text` is a number, else a name.
    pub fn parse(text: &str) -> ImageRef {
        match text.parse::<i64>() {
            Ok(id) if id > 0 => ImageRef::Id(id),
            _ => ImageRef::Name(text.to_string()),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Id(id) => write!(formatter, "image {id}"),
            ImageRef::Name(name) => write!(formatter, "image name {name}"),
        }
    }
}

/// What to verify, and where.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// The image.
    pub image: ImageRef,
    /// The architecture to look a name up for; `None`: x86 for a name, the image's for an id.
    pub arch: Option<Arch>,
    /// Locations in order of preference.
    pub locations: Vec<String>,
    /// Server types in order of preference; empty: the smallest of the architecture.
    pub server_types: Vec<String>,
    /// How long cloud-init may run on the server once SSH answers.
    pub boot_timeout: Duration,
}

/// What was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    /// Its id.
    pub id: i64,
    /// Its `caph-image-name` label, or its name.
    pub name: String,
    /// Its architecture.
    pub arch: Arch,
    /// Its description.
    pub description: String,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The image.
    pub image: VerifiedImage,
    /// The server type and location it ran on.
    pub ran_on: String,
    /// One row per check.
    pub findings: Vec<Finding>,
    /// From creating the server to deleting it.
    pub duration: Duration,
}

impl VerifyReport {
    /// Whether no finding failed.
    pub fn passed(&self) -> bool {
        self.findings
            .iter()
            .all(|finding| finding.status != FindingStatus::Failed)
    }
}

fn refused(message: String) -> BackendError {
    BackendError::Preflight(vec![message])
}

fn arch_of(image: &Image) -> Option<Arch> {
    match image.architecture {
        Architecture::X86 => Some(Arch::X86),
        Architecture::Arm => Some(Arch::Arm),
        Architecture::Unknown(_) => None,
    }
}

/// Finds the image, or says why it cannot be verified (nothing is created).
async fn resolve(client: &Client, request: &VerifyRequest) -> Result<Image, BackendError> {
    let image = match &request.image {
        ImageRef::Id(id) => match client.get_image(ImageId(*id)).await {
            Ok(image) => image,
            Err(error) if error.is_not_found() => {
                return Err(refused(format!(
                    "snapshot {id} does not exist in this project (`caph-image images list` shows the snapshots caph-image made)"
                )));
            }
            Err(error) => {
                return Err(BackendError::Failed {
                    context: format!("looking up image {id}"),
                    source: Box::new(error),
                });
            }
        },
        ImageRef::Name(name) => {
            let arch = request.arch.unwrap_or(Arch::X86);
            let found = lookup::caph_lookup(client, name, arch)
                .await
                .map_err(|error| BackendError::Failed {
                    context: format!("looking up the image name {name}"),
                    source: Box::new(error),
                })?;
            match found.len() {
                0 => {
                    return Err(refused(format!(
                        "no {arch} image is named {name}: Cluster API Provider Hetzner finds none by imageName {name} (neither the label caph-image-name={name} nor a system image of that name); check the name and --arch, or give the snapshot's id"
                    )));
                }
                1 => found
                    .into_iter()
                    .next()
                    .ok_or_else(|| refused(String::new()))?,
                _ => {
                    let ids: Vec<String> = found.iter().map(|image| image.id.to_string()).collect();
                    return Err(refused(format!(
                        "Cluster API Provider Hetzner finds {} {arch} images by imageName {name} ({}) and refuses them all (ImageAmbiguous): delete all but one (`caph-image images prune`), or verify one by its id",
                        found.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    if image.status != ImageStatus::Available {
        return Err(refused(format!(
            "image {} is {}, not available: a server cannot be made from it yet",
            image.id, image.status
        )));
    }
    let Some(arch) = arch_of(&image) else {
        return Err(refused(format!(
            "image {} has an architecture this tool does not know",
            image.id
        )));
    };
    if let Some(wanted) = request.arch
        && wanted != arch
    {
        return Err(refused(format!(
            "image {} is an {arch} image, not {wanted}: leave out --arch or give --arch {arch}",
            image.id
        )));
    }
    Ok(image)
}

impl HcloudBackend {
    /// Verifies an image's first boot on a throwaway server; see the module documentation.
    /// Refused input is [`BackendError::Preflight`]; failed checks are findings in the report.
    pub async fn verify(
        &self,
        context: &Context,
        request: &VerifyRequest,
    ) -> Result<VerifyReport, BackendError> {
        let client = self.client();
        let image = resolve(client, request).await?;
        let arch = arch_of(&image).unwrap_or(Arch::X86);
        let server_types = if request.server_types.is_empty() {
            vec![placement::default_server_type(arch).to_string()]
        } else {
            request.server_types.clone()
        };
        let (placement, problems) =
            placement::read_and_plan(client, arch, &server_types, &request.locations).await?;
        let (Some(placement), true) = (placement, problems.is_empty()) else {
            return Err(BackendError::Preflight(problems));
        };
        // A server's disk must hold the image's (a snapshot keeps its source server's size).
        let candidates: Vec<_> = placement
            .candidates
            .iter()
            .filter(|candidate| candidate.disk_gb >= image.disk_size)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Err(refused(format!(
                "image {} needs a {} GB disk, more than {} has; choose a bigger --server-type",
                image.id,
                image.disk_size,
                server_types.join(", ")
            )));
        }
        let verified = VerifiedImage {
            id: image.id.0,
            name: image
                .labels
                .get(super::naming::NAME_LABEL)
                .cloned()
                .or_else(|| image.name.clone())
                .unwrap_or_default(),
            arch,
            description: image.description.clone().unwrap_or_default(),
        };
        context.progress.event(ProgressEvent::Output {
            scope: arch.to_string(),
            line: format!(
                "image {} ({}): {}",
                verified.id, verified.name, verified.description
            ),
        });

        let tracker = Tracker::new(arch);
        let work = verify_work(
            client,
            &self.config,
            context,
            &tracker,
            image.id,
            &candidates,
            request.boot_timeout,
        );
        let outcome = run::supervise(client, &self.config, context, &tracker, false, work).await;
        let mut outcomes = run::finish_all(
            client,
            &self.config,
            context,
            &format!("the verification of image {}", verified.id),
            &[arch],
            vec![outcome],
            |(ran_on, _, _): &(String, Vec<Finding>, Duration)| ran_on.clone(),
        )
        .await?;
        let (ran_on, findings, duration) = outcomes.pop().ok_or_else(|| BackendError::Failed {
            context: "the verification gave no result".to_string(),
            source: "no outcome".into(),
        })?;
        Ok(VerifyReport {
            image: verified,
            ran_on,
            findings,
            duration,
        })
    }
}

async fn verify_work(
    client: &Client,
    config: &Arc<HcloudBackendConfig>,
    context: &Context,
    tracker: &Tracker,
    image: ImageId,
    candidates: &[placement::Candidate],
    boot_timeout: Duration,
) -> Result<(String, Vec<Finding>, Duration), ArchFailure> {
    let started = Instant::now();
    let arch = tracker.arch();
    let job = Job {
        client,
        config,
        context,
        tracker,
    };
    let name = temporary_name(&context.build_id, arch);
    tracker.enter(
        context,
        Phase::Create,
        format!("server {name} from image {image}"),
    );
    let client_key = KeyPair::generate_ed25519(&format!("caph-image verify {}", context.build_id))?;
    let host_key = KeyPair::generate_ed25519(&format!("caph-image host {}", context.build_id))?;
    let ssh_key = job.create_temporary_key(&name, &client_key).await?;
    let user_data = SecretString::new(firstboot::probe_user_data(&cloud_init::host_key_config(
        &host_key,
    )?));
    let created = job
        .create_on_candidates(candidates, ServerStatus::Running, Vec::new(), |candidate| {
            let mut create = job.server_request(&name, IdOrName::Id(image.0), candidate, ssh_key);
            create.user_data = Some(user_data.clone());
            create
        })
        .await?;
    let ran_on = created.candidate.to_string();

    let session = job
        .connect_pinned(created.address, &client_key, &host_key)
        .await?;
    let mut findings = vec![Finding {
        name: "ssh".to_string(),
        status: FindingStatus::Ok,
        detail: format!(
            "root logged in with the key given at creation; the host key is the pinned one ({})",
            host_key.fingerprint()
        ),
    }];

    tracker.enter(
        context,
        Phase::Provision,
        "waiting for cloud-init, as CAPH polls it",
    );
    findings.push(wait_for_cloud_init(&session, context, tracker, boot_timeout).await?);

    tracker.enter(context, Phase::Verify, "reading what first boot did");
    let evidence_output = session
        .exec_capture(&firstboot::evidence_script(
            "",
            &[
                RELEASE_PATH,
                MODULES_CONFIG_PATH,
                SYSCTL_CONFIG_PATH,
                AUTHORIZED_KEYS_PATH,
            ],
        ))
        .await
        .map_err(ssh("reading the first-boot evidence"))?;
    let evidence = Evidence::parse(&evidence_output.stdout);
    findings.extend(firstboot::judge_first_boot(
        &evidence,
        &Expectations {
            hostname: name.clone(),
            instance_id: created.id.to_string(),
            probe: true,
            host_keys: HostKeys::Exactly(host_key.public_key().to_openssh()),
            machine_id: MachineId::WrittenThisBoot,
        },
    ));
    let build_keys: Vec<String> = evidence
        .get(AUTHORIZED_KEYS_PATH)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("caph-image build"))
        .map(|line| {
            line.split_whitespace()
                .last()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    findings.push(Finding {
        name: "build-key-removed".to_string(),
        status: if build_keys.is_empty() {
            FindingStatus::Ok
        } else {
            FindingStatus::Failed
        },
        detail: if build_keys.is_empty() {
            format!("no build key in {AUTHORIZED_KEYS_PATH}, only the keys given at creation")
        } else {
            format!(
                "{AUTHORIZED_KEYS_PATH} still holds the build's key ({}): whoever held it could log in to every node",
                build_keys.join(", ")
            )
        },
    });
    match NodePromise::from_image_files(
        evidence.get(RELEASE_PATH),
        evidence.get(MODULES_CONFIG_PATH),
        evidence.get(SYSCTL_CONFIG_PATH),
    ) {
        Ok(promise) => {
            let node_checks = checks::promised_checks(&promise);
            let facts = session
                .exec_capture(&checks::facts_script(&node_checks))
                .await
                .map_err(ssh("running the node checks"))?;
            let (results, booted) = checks::judge_facts(&node_checks, &facts.stdout);
            if !booted {
                findings.push(Finding {
                    name: "node-checks".to_string(),
                    status: FindingStatus::NotChecked,
                    detail: "systemd is not the init system on this server (a simulated one?): the checks of the running node were not made, only of its files".to_string(),
                });
            }
            findings.extend(results.iter().map(Finding::from));
        }
        Err(problem) => findings.push(Finding {
            name: "node-checks".to_string(),
            status: FindingStatus::NotChecked,
            detail: problem,
        }),
    }
    session.close().await;

    job.clean_up(created.id).await?;
    tracker.enter(
        context,
        Phase::Done,
        format!("server {} deleted", created.id),
    );
    Ok((ran_on, findings, started.elapsed()))
}

/// Polls `cloud-init status` as CAPH does (`host.go` `actionEnsureProvisioned`) until it no longer
/// runs, or `timeout` passes; the finding says how it ended.
async fn wait_for_cloud_init(
    session: &Session,
    context: &Context,
    tracker: &Tracker,
    timeout: Duration,
) -> Result<Finding, ArchFailure> {
    let started = Instant::now();
    let mut last_status = String::new();
    let mut last_report = Instant::now();
    loop {
        let output = session
            .exec_capture("cloud-init status")
            .await
            .map_err(ssh("asking `cloud-init status`"))?;
        let status = output.stdout.trim().to_string();
        if status != last_status || last_report.elapsed() >= WAIT_REPORT_EVERY {
            tracker.enter(
                context,
                Phase::Provision,
                format!(
                    "{:.0}s: cloud-init says {}",
                    started.elapsed().as_secs_f64(),
                    if status.is_empty() {
                        format!("nothing (exit {})", output.exit_code)
                    } else {
                        status.replace('\n', "; ")
                    }
                ),
            );
            last_status = status.clone();
            last_report = Instant::now();
        }
        if output.exit_code == 127 {
            return Ok(Finding {
                name: "cloud-init-done".to_string(),
                status: FindingStatus::Failed,
                detail:
                    "cloud-init is not installed: CAPH's `cloud-init status` poll fails for ever"
                        .to_string(),
            });
        }
        let running = status.contains("status: running") || status.contains("not run");
        if !running {
            let done = status.lines().any(|line| line.trim() == "status: done");
            return Ok(Finding {
                name: "cloud-init-done".to_string(),
                status: if done {
                    FindingStatus::Ok
                } else {
                    FindingStatus::Failed
                },
                detail: format!(
                    "`cloud-init status` says \"{}\" after {:.0}s{}",
                    caph_core::text::Escaped(&status.replace('\n', "; ")),
                    started.elapsed().as_secs_f64(),
                    if done {
                        ", as CAPH waits for"
                    } else {
                        "; CAPH waits for status: done"
                    }
                ),
            });
        }
        if started.elapsed() >= timeout {
            return Ok(Finding {
                name: "cloud-init-done".to_string(),
                status: FindingStatus::Failed,
                detail: format!(
                    "still \"{}\" after {:.0}s (--boot-timeout)",
                    caph_core::text::Escaped(&status),
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}
