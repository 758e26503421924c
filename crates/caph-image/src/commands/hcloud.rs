//! `caph-image build hcloud`, `images list|prune` and `gc`: the Hetzner Cloud commands.

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
use caph_hcloud::backend::{HcloudBackend, HcloudBackendConfig, naming};
use caph_hcloud::{Client, ClientConfig, Token};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{EXIT_CANCELLED, cancel_on_signals, runtime};
use crate::cli::{EXIT_FAILURE, GlobalArgs, HcloudArgs, OutputFormat};
use crate::progress::Progress;
use crate::{output, spec_files};

/// Options of `build hcloud`.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    pub spec: &'a Path,
    pub arch: &'a [Arch],
    pub location: Option<&'a str>,
    pub server_type: Option<&'a str>,
    pub replace: bool,
    pub keep_on_error: bool,
    pub dry_run: bool,
    pub shutdown_timeout: Duration,
    pub api: &'a HcloudArgs,
}

fn client(api: &HcloudArgs) -> anyhow::Result<Client> {
    let token = Token::from_env().ok_or_else(|| {
        anyhow::anyhow!("HCLOUD_TOKEN is not set: export a read-write API token of the Hetzner Cloud project the snapshots go into (Cloud Console, Security, API tokens)")
    })?;
    Client::new(ClientConfig::new(api.endpoint.clone(), token))
        .context("setting up the Hetzner Cloud client")
}

pub fn build(global: &GlobalArgs, options: BuildOptions<'_>) -> anyhow::Result<ExitCode> {
    let mut spec = match spec_files::load(options.spec) {
        Ok(spec) => spec,
        Err(diagnostics) => {
            output::note(&diagnostics.to_string());
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    let Some(hcloud) = spec.hcloud.as_mut() else {
        anyhow::bail!(
            "{}: the spec has no [hcloud] table; add one with architectures, location and server_type",
            options.spec.display()
        );
    };
    if let Some(location) = options.location {
        hcloud.location = location.to_string();
    }
    let architectures: Vec<Arch> = if options.arch.is_empty() {
        hcloud.architectures.clone()
    } else {
        options.arch.to_vec()
    };
    if let Some(server_type) = options.server_type {
        if architectures.len() != 1 {
            anyhow::bail!(
                "--server-type applies to one architecture; add --arch x86 or --arch arm"
            );
        }
        hcloud
            .server_types
            .insert(architectures[0], server_type.to_string());
    }
    for arch in &architectures {
        if !spec.base.hcloud_images.contains_key(arch) {
            anyhow::bail!(
                "{}: --arch {arch} has no base image; add base.hcloud.{arch} to the spec",
                options.spec.display()
            );
        }
    }
    let spec = Arc::new(spec);
    let request = BuildRequest {
        spec: spec.clone(),
        architectures: architectures.clone(),
        replace: options.replace,
        keep_on_error: options.keep_on_error,
    };
    let client = client(options.api)?;
    let runtime = runtime()?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let context = Context {
        progress: progress.clone(),
        cancel: CancellationToken::new(),
        build_id: naming::new_build_id(),
    };
    let mut config = HcloudBackendConfig::new(format!("caph-image {}", env!("CARGO_PKG_VERSION")));
    config.keep_dir = std::env::current_dir().unwrap_or_default();
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
            output::result(&plan::render(&spec, Target::Hcloud, *arch).render_script());
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
        "run `caph-image gc` to remove what is left".to_string(),
    );
    let result = runtime.block_on(backend.build(&context, &request));
    progress.finish();
    match result {
        Ok(artifacts) => {
            print_artifacts(global, &context.build_id, &spec, &artifacts);
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

fn human_size(bytes: Option<u64>) -> String {
    match bytes {
        Some(bytes) => format!("{:.2} GB", bytes as f64 / 1e9),
        None => "-".to_string(),
    }
}

fn machine_template(spec: &caph_core::ImageSpec, arch: Arch) -> String {
    let server_type = spec
        .hcloud
        .as_ref()
        .and_then(|h| h.server_types.get(&arch))
        .cloned()
        .unwrap_or_default();
    format!(
        "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1\nkind: HCloudMachineTemplate\nmetadata:\n  name: {name}-{arch}\nspec:\n  template:\n    spec:\n      imageName: {name}\n      type: {server_type}\n",
        name = spec.image.name
    )
}

fn print_artifacts(
    global: &GlobalArgs,
    build_id: &str,
    spec: &caph_core::ImageSpec,
    artifacts: &[Artifact],
) {
    match global.output {
        OutputFormat::Json => output::json(&json!({
            "build_id": build_id,
            "image_name": spec.image.name,
            "snapshots": artifacts.iter().map(|a| json!({
                "id": a.id, "architecture": a.arch.hcloud_name(), "size_bytes": a.size_bytes,
                "duration_seconds": a.duration.map(|d| d.as_secs_f64()), "labels": a.labels,
                "machine_template": machine_template(spec, a.arch),
            })).collect::<Vec<_>>(),
        })),
        OutputFormat::Text => {
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
            output::result("");
            output::result(&format!(
                "Cluster API Provider Hetzner finds them by imageName \"{}\":",
                spec.image.name
            ));
            for artifact in artifacts {
                output::result("---");
                output::result(machine_template(spec, artifact.arch).trim_end());
            }
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
                output::result(&format!("{verb}{:<12} {:<6} {:<40} {:>10}  {}", a.id, a.arch, a.name, human_size(a.size_bytes), a.created.as_deref().unwrap_or("-")));
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
