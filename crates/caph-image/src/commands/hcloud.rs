//! `caph-image build hcloud` (against a project, or with `--sim` against a simulator in this process), `images list|prune` and `gc`: the Hetzner Cloud commands.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use caph_core::Arch;
use caph_core::backend::{
    Artifact, Backend, BackendError, BuildRequest, Context, GcOptions, NoProgress,
};
use caph_core::plan::{self, Target};
use caph_core::text::escape;
use caph_hcloud::backend::{HcloudBackend, HcloudBackendConfig, naming};
use caph_hcloud::{Client, ClientConfig, Token};
use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, TimeMode};
use caph_sim::machine::SshMachines;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{EXIT_CANCELLED, cancel_on_signals, from_tarball, runtime, sim};
use crate::cli::{EXIT_FAILURE, EXIT_USAGE, GlobalArgs, HcloudArgs, OutputFormat};
use crate::progress::Progress;
use crate::{output, spec_files, templates};

/// Options of `build hcloud`.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    pub spec: &'a Path,
    pub arch: &'a [Arch],
    pub locations: &'a [String],
    pub server_types: &'a [String],
    pub replace: bool,
    pub keep_on_error: bool,
    pub dry_run: bool,
    /// `--from-tarball`: the tarball written onto the disk instead of the plan run over SSH.
    pub from_tarball: Option<from_tarball::Source<'a>>,
    pub shutdown_timeout: Duration,
    /// `--sim` with its `--sim-speed`: build against a simulator in this process.
    pub sim: Option<f64>,
    pub api: &'a HcloudArgs,
}

pub(super) fn client(api: &HcloudArgs) -> anyhow::Result<Client> {
    let token = Token::from_env().ok_or_else(|| {
        anyhow::anyhow!("HCLOUD_TOKEN is not set: export a read-write API token of the Hetzner Cloud project the snapshots go into (Cloud Console, Security, API tokens), or try the whole build without an account against a simulated cloud on this machine with --sim (`sudo caph-image build hcloud SPEC --sim`)")
    })?;
    Client::new(ClientConfig::new(api.endpoint.clone(), token))
        .context("setting up the Hetzner Cloud client")
}

/// The backend's settings for a run of this binary: the defaults for the real service, this
/// version as the builder, and the current directory for what `--keep-on-error` writes.
pub(super) fn backend_config() -> HcloudBackendConfig {
    let mut config = HcloudBackendConfig::new(format!("caph-image {}", env!("CARGO_PKG_VERSION")));
    config.keep_dir = std::env::current_dir().unwrap_or_default();
    config
}

pub fn build(global: &GlobalArgs, options: BuildOptions<'_>) -> anyhow::Result<ExitCode> {
    let Some(mut spec) = spec_files::load_or_report(options.spec) else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let Some(hcloud) = spec.hcloud.as_mut() else {
        anyhow::bail!(
            "{}: the spec has no [hcloud] table; add one with architectures, location and server_type",
            options.spec.display()
        );
    };
    if !options.locations.is_empty() {
        hcloud.locations = options.locations.to_vec();
    }
    let architectures: Vec<Arch> = match (&options.from_tarball, options.arch.is_empty()) {
        // One tarball is one architecture: its own, by its name.
        (Some(source), true) => vec![source.implied_arch()],
        (None, true) => hcloud.architectures.clone(),
        (_, false) => options.arch.to_vec(),
    };
    if !options.server_types.is_empty() {
        if architectures.len() != 1 {
            anyhow::bail!(
                "--server-type applies to one architecture; add --arch x86 or --arch arm"
            );
        }
        hcloud
            .server_types
            .insert(architectures[0], options.server_types.to_vec());
    }
    for arch in &architectures {
        if !spec.base.hcloud_images.contains_key(arch) {
            anyhow::bail!(
                "{}: --arch {arch} has no base image; add base.hcloud.{arch} to the spec",
                options.spec.display()
            );
        }
    }
    if let Some(source) = &options.from_tarball {
        return from_tarball::build(global, &options, source, spec, &architectures);
    }
    let spec = Arc::new(spec);
    let request = BuildRequest {
        spec: spec.clone(),
        architectures: architectures.clone(),
        replace: options.replace,
        keep_on_error: options.keep_on_error,
    };
    if options.sim.is_some() && options.api.endpoint != caph_hcloud::DEFAULT_ENDPOINT {
        output::error(&format!(
            "--sim builds against its own simulated API, not {}: leave out --endpoint and unset HCLOUD_ENDPOINT",
            options.api.endpoint
        ));
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let runtime = runtime()?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    // Declared after the runtime, so dropped before it; the runtime's own drop then ends the
    // simulator's tasks, which release the last references to the machines: they are killed and
    // their directory removed before the process exits, on every path out of this function.
    let simulated = match options.sim {
        Some(speed) => {
            let images: Vec<(String, Arch)> = architectures
                .iter()
                .filter_map(|arch| {
                    spec.base
                        .hcloud_images
                        .get(arch)
                        .map(|image| (image.clone(), *arch))
                })
                .collect();
            Some(runtime.block_on(SimCloud::start(
                speed,
                &images,
                &progress,
                options.dry_run,
                "caph-image build hcloud SPEC --sim",
            ))?)
        }
        None => None,
    };
    let client = match &simulated {
        Some(cloud) => cloud.client()?,
        None => client(options.api)?,
    };
    let context = Context {
        progress: progress.clone(),
        cancel: CancellationToken::new(),
        build_id: naming::new_build_id(),
    };
    let mut config = backend_config();
    config.shutdown_timeout = options.shutdown_timeout;
    let backend = HcloudBackend::new(client, config);

    if options.dry_run {
        let report = runtime
            .block_on(backend.preflight(&context, &request))
            .map_err(anyhow::Error::new)?;
        for check in &report.checks {
            output::result(&format!("ok: {check}"));
        }
        for problem in &report.problems {
            output::result(&format!("problem: {problem}"));
        }
        for arch in &architectures {
            output::script(&plan::render(&spec, Target::Hcloud, *arch)?.render_script());
        }
        output::note("dry run: nothing was created");
        return Ok(if report.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        });
    }

    output::note(&format!(
        "build {}: {} for {}",
        context.build_id,
        spec.image.name,
        architectures
            .iter()
            .map(Arch::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let token = context.cancel.clone();
    cancel_on_signals(
        &runtime,
        move || token.cancel(),
        if simulated.is_some() {
            "the simulator's machines are removed by the next --sim run".to_string()
        } else {
            "run `caph-image gc` to remove what is left".to_string()
        },
    );
    let result = runtime.block_on(backend.build(&context, &request));
    progress.finish();
    match result {
        Ok(artifacts) => {
            let summary = simulated.as_ref().map(SimCloud::summary);
            print_artifacts(
                global,
                &context.build_id,
                &spec,
                &artifacts,
                summary.as_ref(),
                None,
            );
            if simulated.is_some() {
                // Removing the disk copies takes a while (seconds per GB); say why it waits.
                output::note("simulator: stopping, and removing its machines and snapshot disks");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(BackendError::Cancelled { phase, cleanup }) => {
            output::error(&format!("cancelled during {phase}; {cleanup}"));
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        // The source chain is part of the message: {:#} in main prints it.
        Err(error) => Err(anyhow::Error::new(error)),
    }
}

pub(super) fn human_size(bytes: Option<u64>) -> String {
    match bytes {
        Some(bytes) => format!("{:.2} GB", bytes as f64 / 1e9),
        None => "-".to_string(),
    }
}

/// The template for a snapshot: its type is the one the snapshot was built on (a fallback to a
/// bigger type makes a snapshot that fits only that size), else the spec's first.
fn machine_template(spec: &caph_core::ImageSpec, artifact: &Artifact) -> String {
    let arch = artifact.arch;
    let server_type = artifact
        .labels
        .get("build-server-type")
        .cloned()
        .or_else(|| {
            spec.hcloud
                .as_ref()
                .and_then(|h| h.server_types.get(&arch))
                .and_then(|types| types.first().cloned())
        })
        .unwrap_or_default();
    templates::hcloud_machine_template(&spec.image.name, arch, &server_type)
}

pub(super) fn print_artifacts(
    global: &GlobalArgs,
    build_id: &str,
    spec: &caph_core::ImageSpec,
    artifacts: &[Artifact],
    simulated: Option<&SimSummary>,
    tarball: Option<&TarballPrinted<'_>>,
) {
    if let (Some(summary), OutputFormat::Json) = (simulated, global.output) {
        // Also on stderr, where a person watching a scripted run reads, so that nobody takes
        // the ids for real snapshots; text output ends with the same sentence.
        output::note(&summary.sentence());
    }
    match global.output {
        OutputFormat::Json => {
            let mut document = json!({
                "build_id": build_id,
                "image_name": spec.image.name,
                "simulated": simulated.is_some(),
                "snapshots": artifacts.iter().map(|a| json!({
                    "id": a.id, "architecture": a.arch.hcloud_name(), "size_bytes": a.size_bytes,
                    "duration_seconds": a.duration.map(|d| d.as_secs_f64()), "labels": a.labels,
                    "machine_template": machine_template(spec, a), "notes": a.notes,
                })).collect::<Vec<_>>(),
            });
            if let Some(tarball) = tarball {
                document["tarball"] = json!({ "file": tarball.file, "sha256": tarball.sha256 });
            }
            if let Some(summary) = simulated {
                document["simulator"] = json!({
                    "speed": summary.speed,
                    "note": summary.sentence(),
                    "snapshots": summary.snapshots,
                    "servers_left": summary.servers,
                    "ssh_keys_left": summary.ssh_keys,
                });
            }
            output::json(&document);
        }
        OutputFormat::Text => {
            if let Some(tarball) = tarball {
                output::result(&format!(
                    "tarball {} sha256 {}",
                    escape(&tarball.file.display().to_string()),
                    tarball.sha256
                ));
            }
            output::result(&format!(
                "{:<12} {:<6} {:>10} {:>10}",
                "SNAPSHOT", "ARCH", "SIZE", "DURATION"
            ));
            for artifact in artifacts {
                let duration = artifact
                    .duration
                    .map_or("-".to_string(), |d| format!("{:.0}s", d.as_secs_f64()));
                output::result(&format!(
                    "{:<12} {:<6} {:>10} {:>10}",
                    artifact.id,
                    artifact.arch,
                    human_size(artifact.size_bytes),
                    duration
                ));
            }
            for artifact in artifacts {
                for note in &artifact.notes {
                    output::result(&format!("{}: {}", artifact.arch, escape(note)));
                }
            }
            output::result("");
            output::result(&format!(
                "Cluster API Provider Hetzner finds them by imageName \"{}\":",
                spec.image.name
            ));
            for artifact in artifacts {
                output::result("---");
                output::result(machine_template(spec, artifact).trim_end());
            }
            if let Some(summary) = simulated {
                output::result("");
                output::result(&summary.sentence());
            }
        }
    }
}

/// The tarball a `--from-tarball` snapshot was written from, for the result.
pub(super) struct TarballPrinted<'a> {
    pub file: &'a Path,
    pub sha256: &'a str,
}

/// `--sim`: a Hetzner Cloud API simulator in this process, whose servers are real OpenSSH
/// servers in chroots on this machine (`caph_sim::machine::SshMachines`).
pub(super) struct SimCloud {
    /// Dropped before `_machines` (field order): the API stops before its machines go.
    sim: HcloudSim,
    /// Dropping the last reference kills every machine and removes its directory.
    _machines: Option<Arc<SshMachines>>,
    token: Token,
    speed: f64,
}

/// What the simulator holds after a successful build.
#[derive(Debug)]
pub(super) struct SimSummary {
    speed: f64,
    snapshots: usize,
    servers: usize,
    ssh_keys: usize,
}

impl SimSummary {
    fn sentence(&self) -> String {
        format!(
            "Simulated run (--sim, {}x real time): the snapshots exist only in the simulator, which stopped with this command; nothing was created in a Hetzner Cloud project. The simulator ended with {} snapshot(s), {} server(s) and {} SSH key(s).",
            self.speed, self.snapshots, self.servers, self.ssh_keys
        )
    }
}

impl SimCloud {
    /// Starts the simulator and, unless this is a dry run (which creates no server), its SSH
    /// machines with the root filesystem of each system image and architecture in `images`
    /// built or found first; `command` is the command line to suggest as root.
    pub(super) async fn start(
        speed: f64,
        images: &[(String, Arch)],
        progress: &Arc<Progress>,
        dry_run: bool,
        command: &str,
    ) -> anyhow::Result<SimCloud> {
        if Token::from_env().is_some() {
            output::note(
                "--sim: HCLOUD_TOKEN is not used; nothing is sent to the Hetzner Cloud API",
            );
        }
        let machines = if dry_run {
            None
        } else {
            Some(Self::machines(images, progress, command).await?)
        };
        // A token of this run only: nothing else on the machine can use the simulator's API.
        let token = format!("sim-{:032x}", rand::random::<u128>());
        let mut config = HcloudSimConfig {
            token: token.clone(),
            time: TimeMode::Scaled(1.0 / speed),
            ..Default::default()
        };
        if let Some(machines) = &machines {
            config.machines = machines.clone();
        }
        let sim = HcloudSim::start(config)
            .await
            .context("--sim: starting the Hetzner Cloud simulator on 127.0.0.1")?;
        let servers = if dry_run {
            "a dry run starts no servers"
        } else {
            "its servers are OpenSSH servers in chroots on this machine"
        };
        output::note(&format!(
            "simulated run: a Hetzner Cloud simulator at {} ({speed}x real time), {servers}; nothing is created in a Hetzner Cloud project",
            sim.api_url()
        ));
        Ok(SimCloud {
            sim,
            _machines: machines,
            token: Token::new(token),
            speed,
        })
    }

    /// The SSH machines, with each image's root filesystem ready: a cold cache is built with
    /// mmdebstrap here, with progress, instead of holding up the first `POST /servers`.
    async fn machines(
        images: &[(String, Arch)],
        progress: &Arc<Progress>,
        command: &str,
    ) -> anyhow::Result<Arc<SshMachines>> {
        let machines = sim::Machines::start(
            progress, command,
            // POST /servers answers at once, as the real API does, while the disk is copied.
            true,
        )?;
        for (image, arch) in images {
            machines.prepare(image, *arch).await.map_err(|error| {
                let others: Vec<String> = images
                    .iter()
                    .map(|(_, other)| *other)
                    .filter(|other| other != arch)
                    .map(|other| other.to_string())
                    .collect();
                let without = if others.is_empty() {
                    String::new()
                } else {
                    format!("; or build without {arch}: --arch {}", others.join(","))
                };
                anyhow::anyhow!("--sim cannot run {arch} servers on this machine: {error}{without}")
            })?;
        }
        machines.prepared();
        Ok(machines.machines)
    }

    pub(super) fn client(&self) -> anyhow::Result<Client> {
        Client::new(ClientConfig::new(self.sim.api_url(), self.token.clone()))
            .context("setting up the client of the simulated cloud")
    }

    fn summary(&self) -> SimSummary {
        let state = self.sim.state();
        SimSummary {
            speed: self.speed,
            snapshots: state.snapshots().len(),
            servers: state.servers.len(),
            ssh_keys: state.ssh_keys.len(),
        }
    }
}

fn quiet_context() -> Context {
    Context {
        progress: Arc::new(NoProgress),
        cancel: CancellationToken::new(),
        build_id: String::new(),
    }
}

pub fn list(global: &GlobalArgs, name: Option<&str>, api: &HcloudArgs) -> anyhow::Result<ExitCode> {
    let backend = HcloudBackend::new(client(api)?, HcloudBackendConfig::new("caph-image"));
    let artifacts = runtime()?
        .block_on(backend.list(&quiet_context(), name))
        .map_err(anyhow::Error::new)?;
    print_listing(global, &artifacts, "");
    Ok(ExitCode::SUCCESS)
}

fn print_listing(global: &GlobalArgs, artifacts: &[Artifact], verb: &str) {
    match global.output {
        OutputFormat::Json => output::json(&json!(artifacts.iter().map(|a| json!({
            "id": a.id, "architecture": a.arch.hcloud_name(), "name": a.name, "size_bytes": a.size_bytes, "created": a.created, "labels": a.labels,
        })).collect::<Vec<_>>())),
        OutputFormat::Text => {
            output::result(&format!("{:width$}{:<12} {:<6} {:<40} {:>10}  {}", "", "SNAPSHOT", "ARCH", "NAME", "SIZE", "CREATED", width = verb.len()));
            for a in artifacts {
                // Names come from the API: escaped whole, so a row stays one row.
                output::result(&format!("{verb}{:<12} {:<6} {:<40} {:>10}  {}", a.id, a.arch, escape(&a.name), human_size(a.size_bytes), escape(a.created.as_deref().unwrap_or("-"))));
            }
        }
    }
}

pub fn prune(
    global: &GlobalArgs,
    keep: usize,
    name: Option<&str>,
    dry_run: bool,
    api: &HcloudArgs,
) -> anyhow::Result<ExitCode> {
    let client = client(api)?;
    let backend = HcloudBackend::new(client.clone(), HcloudBackendConfig::new("caph-image"));
    let runtime = runtime()?;
    // Newest first, as list returns them; keep the first `keep` per architecture.
    let artifacts = runtime
        .block_on(backend.list(&quiet_context(), name))
        .map_err(anyhow::Error::new)?;
    let mut seen: std::collections::BTreeMap<Arch, usize> = std::collections::BTreeMap::new();
    let doomed: Vec<Artifact> = artifacts
        .into_iter()
        .filter(|artifact| {
            let count = seen.entry(artifact.arch).or_default();
            *count += 1;
            *count > keep
        })
        .collect();
    if !dry_run {
        runtime.block_on(async {
            for artifact in &doomed {
                let id: i64 = artifact.id.parse().context("snapshot ids are numbers")?;
                client
                    .delete_image(caph_hcloud::client::ImageId(id))
                    .await
                    .with_context(|| format!("deleting snapshot {}", artifact.id))?;
            }
            anyhow::Ok(())
        })?;
    }
    print_listing(
        global,
        &doomed,
        if dry_run { "would delete " } else { "deleted " },
    );
    Ok(ExitCode::SUCCESS)
}

pub fn gc(
    global: &GlobalArgs,
    older_than: Duration,
    dry_run: bool,
    api: &HcloudArgs,
) -> anyhow::Result<ExitCode> {
    let backend = HcloudBackend::new(client(api)?, HcloudBackendConfig::new("caph-image"));
    let report = runtime()?
        .block_on(backend.gc(
            &quiet_context(),
            GcOptions {
                older_than,
                dry_run,
            },
        ))
        .map_err(anyhow::Error::new)?;
    match global.output {
        OutputFormat::Json => {
            output::json(&json!({ "dry_run": dry_run, "removed": report.removed }))
        }
        OutputFormat::Text if report.removed.is_empty() => output::result("nothing to remove"),
        OutputFormat::Text => report.removed.iter().for_each(|line| output::result(line)),
    }
    Ok(ExitCode::SUCCESS)
}
