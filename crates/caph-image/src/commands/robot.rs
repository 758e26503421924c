//! `caph-image build robot` (build or take a tarball, install it through the rescue system and
//! installimage, check the node) and `caph-image robot servers`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use caph_core::Arch;
use caph_core::backend::Context;
use caph_hcloud::backend::naming;
use caph_robot::backend::{InstallTarget, RobotBackend, RobotBackendConfig, layout_from_autosetup};
use caph_robot::client::{Credentials, RobotClient};
use caph_rootfs::assemble::{self, AssembleOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{EXIT_CANCELLED, cancel_on_signals, runtime};
use crate::cli::{EXIT_FAILURE, GlobalArgs, OutputFormat, RobotArgs};
use crate::progress::Progress;
use crate::{output, spec_files};

/// The disk layouts shipped in `installimage/`, built into the binary so `--layout NAME` works anywhere.
const SHIPPED_LAYOUTS: &[(&str, &str)] = &[
    (
        "single-disk",
        include_str!("../../../../installimage/single-disk.autosetup"),
    ),
    (
        "raid1",
        include_str!("../../../../installimage/raid1.autosetup"),
    ),
    (
        "raid1-lvm",
        include_str!("../../../../installimage/raid1-lvm.autosetup"),
    ),
    (
        "uefi",
        include_str!("../../../../installimage/uefi.autosetup"),
    ),
];

/// Options of `build robot`.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    pub spec: &'a Path,
    pub server: u64,
    pub tarball: Option<&'a Path>,
    pub layout: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub output_dir: &'a Path,
    pub arch: Arch,
    pub authorize_keys: &'a [String],
    pub poll_interval: Duration,
    pub reset_timeout: Duration,
    pub api: &'a RobotArgs,
}

fn client(api: &RobotArgs) -> anyhow::Result<RobotClient> {
    let user = std::env::var("HETZNER_ROBOT_USER")
        .ok()
        .filter(|user| !user.is_empty());
    let password = std::env::var("HETZNER_ROBOT_PASSWORD")
        .ok()
        .filter(|password| !password.is_empty());
    let (Some(user), Some(password)) = (user, password) else {
        anyhow::bail!(
            "HETZNER_ROBOT_USER and HETZNER_ROBOT_PASSWORD must be set: create a web service user in Robot (Settings, Web service and app settings)"
        );
    };
    RobotClient::new(&api.endpoint, Credentials::new(user, password))
        .context("setting up the Robot client")
}

/// A shipped layout by name, or an autosetup file by path.
fn layout(name_or_path: &str) -> anyhow::Result<caph_core::spec::DiskLayout> {
    let text = match SHIPPED_LAYOUTS.iter().find(|(name, _)| *name == name_or_path) {
        Some((_, text)) => (*text).to_string(),
        None => std::fs::read_to_string(name_or_path).with_context(|| {
            let names: Vec<&str> = SHIPPED_LAYOUTS.iter().map(|(name, _)| *name).collect();
            format!("--layout {name_or_path}: neither a shipped layout ({}) nor a readable autosetup file", names.join(", "))
        })?,
    };
    layout_from_autosetup(&text).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("--layout {name_or_path}: {}", lines.join("; "))
    })
}

pub fn build(global: &GlobalArgs, options: BuildOptions<'_>) -> anyhow::Result<ExitCode> {
    let Some(spec) = spec_files::load_or_report(options.spec) else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    if spec.robot.is_none() && options.layout.is_none() {
        anyhow::bail!(
            "{}: the spec has no [robot] table; add one with hostname and [robot.disk], or pass --layout and --hostname",
            options.spec.display()
        );
    }
    // Everything local is checked before the Robot account or the server is touched.
    let layout = options.layout.map(layout).transpose()?;
    let client = client(options.api)?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let runtime = runtime()?;
    let build_id = naming::new_build_id();

    let tarball: PathBuf = match options.tarball {
        Some(tarball) => tarball.to_path_buf(),
        None => {
            let spec_dir = options
                .spec
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut assemble_options =
                AssembleOptions::new(options.arch, spec_dir, options.output_dir.to_path_buf());
            assemble_options.build_id = build_id.clone();
            assemble_options.builder = format!("caph-image {}", env!("CARGO_PKG_VERSION"));
            let cancel = assemble_options.cancel.clone();
            cancel_on_signals(
                &runtime,
                move || cancel.cancel(),
                "check for a .caph-rootfs-* work directory and its mounts".to_string(),
            );
            output::note(&format!(
                "build {build_id}: building the {} tarball of {} first",
                options.arch.debian_name(),
                spec.image.name
            ));
            let assembled = assemble::assemble(&spec, &assemble_options, progress.as_ref())
                .with_context(|| format!("building the tarball of {}", options.spec.display()))?;
            assembled.tarball
        }
    };

    let mut target = InstallTarget::new(options.server, &tarball);
    target.layout = layout;
    target.hostname = options.hostname.map(str::to_string);
    target.extra_keys = options.authorize_keys.to_vec();
    let config = RobotBackendConfig {
        poll_interval: options.poll_interval,
        sw_reset_wait: options.reset_timeout,
        hw_reset_wait: options.reset_timeout,
        ..RobotBackendConfig::default()
    };
    let backend = RobotBackend::new(client, config);
    let context = Context {
        progress: progress.clone(),
        cancel: CancellationToken::new(),
        build_id: build_id.clone(),
    };
    let token = context.cancel.clone();
    cancel_on_signals(
        &runtime,
        move || token.cancel(),
        format!(
            "remove the rescue activation of server {} in Robot if it is still active",
            options.server
        ),
    );
    output::note(&format!(
        "build {build_id}: installing {} on server {}",
        tarball.display(),
        options.server
    ));
    let result = runtime.block_on(backend.install(&context, &spec, &target));
    progress.finish();
    match result {
        Ok(report) => {
            let file_name = tarball
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let template = super::tarball::machine_template(
                &file_name,
                Some(&spec.image.name),
                Some(options.arch),
            );
            match global.output {
                OutputFormat::Json => output::json(&json!({
                    "build_id": build_id,
                    "server_number": report.server_number,
                    "hostname": report.hostname,
                    "ip": report.ip,
                    "host_key": report.host_key,
                    "host_key_fingerprint": report.host_key_fingerprint,
                    "rescue_host_key_fingerprint": report.rescue_host_key_fingerprint,
                    "image": report.image,
                    "checks": report.checks,
                    "duration_seconds": report.duration.as_secs_f64(),
                    "machine_template": template,
                })),
                OutputFormat::Text => {
                    output::result(&format!(
                        "server {} ({}) runs {} as {}",
                        report.server_number, report.ip, report.image, report.hostname
                    ));
                    output::result(&format!(
                        "host key {} (the rescue system's was {})",
                        report.host_key_fingerprint, report.rescue_host_key_fingerprint
                    ));
                    for check in &report.checks {
                        output::result(&format!("ok: {check}"));
                    }
                    output::result(&format!("took {:.0}s", report.duration.as_secs_f64()));
                    output::result("---");
                    output::result(template.trim_end());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_cancelled() => {
            output::error(&error.to_string());
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}

pub fn servers(global: &GlobalArgs, api: &RobotArgs) -> anyhow::Result<ExitCode> {
    let client = client(api)?;
    let servers = runtime()?
        .block_on(client.servers())
        .context("listing dedicated servers")?;
    match global.output {
        OutputFormat::Json => output::json(&json!(servers.iter().map(|server| json!({
            "server_number": server.server_number, "server_name": server.server_name, "server_ip": server.server_ip,
            "product": server.product, "dc": server.dc, "status": server.status, "cancelled": server.cancelled,
        })).collect::<Vec<_>>())),
        OutputFormat::Text => {
            output::result(&format!("{:<8} {:<24} {:<16} {:<14} {:<12} {}", "NUMBER", "NAME", "IP", "PRODUCT", "DC", "STATUS"));
            for server in &servers {
                output::result(&format!(
                    "{:<8} {:<24} {:<16} {:<14} {:<12} {}",
                    server.server_number,
                    server.server_name,
                    server.server_ip.as_deref().unwrap_or("-"),
                    server.product,
                    server.dc,
                    server.status
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
