//! `caph-image verify tarball` and `verify hcloud`: an image booted for real, and a table of what
//! its first boot showed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use caph_boot::BootError;
use caph_boot::user_data::UserData;
use caph_boot::verify::{TarballReport, TarballRequest};
use caph_core::backend::Context;
use caph_core::checks::{Finding, FindingStatus};
use caph_core::text::escape;
use serde_json::json;

use super::{EXIT_CANCELLED, run_cancellable};
use crate::cli::{EXIT_FAILURE, EXIT_USAGE, GlobalArgs, OutputFormat};
use crate::output;

/// Options of `verify tarball`.
#[derive(Debug)]
pub struct TarballOptions {
    pub tarball: PathBuf,
    pub user_data: Option<PathBuf>,
    pub hostname: String,
    pub boot_timeout: Duration,
    pub work_dir: PathBuf,
    pub console_log: Option<PathBuf>,
}

/// The word a finding's status has in JSON.
fn status_key(status: FindingStatus) -> &'static str {
    match status {
        FindingStatus::Ok => "ok",
        FindingStatus::Failed => "failed",
        FindingStatus::NotChecked => "not-checked",
    }
}

fn findings_json(findings: &[Finding]) -> serde_json::Value {
    json!(
        findings
            .iter()
            .map(|finding| json!({
                "name": finding.name,
                "status": status_key(finding.status),
                "detail": finding.detail,
            }))
            .collect::<Vec<_>>()
    )
}

/// The table: one row per check, then a count.
fn print_table(findings: &[Finding]) {
    let width = findings
        .iter()
        .map(|finding| finding.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    output::result(&format!("{:<width$}  {:<11}  DETAIL", "CHECK", "STATUS"));
    for finding in findings {
        output::result(&format!(
            "{:<width$}  {:<11}  {}",
            escape(&finding.name),
            finding.status.word(),
            escape(&finding.detail)
        ));
    }
    let count = |status: FindingStatus| {
        findings
            .iter()
            .filter(|finding| finding.status == status)
            .count()
    };
    let mut summary = format!(
        "{} checks: {} ok, {} FAILED",
        findings.len(),
        count(FindingStatus::Ok),
        count(FindingStatus::Failed)
    );
    if count(FindingStatus::NotChecked) > 0 {
        summary.push_str(&format!(
            ", {} not checked",
            count(FindingStatus::NotChecked)
        ));
    }
    output::result(&summary);
}

fn exit_code(findings: &[Finding]) -> ExitCode {
    if findings
        .iter()
        .any(|finding| finding.status == FindingStatus::Failed)
    {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Refused input: every problem, and exit code 2.
fn refused(problems: &[String]) -> anyhow::Result<ExitCode> {
    for problem in problems {
        output::error(problem);
    }
    Ok(ExitCode::from(EXIT_USAGE))
}

pub fn tarball(global: &GlobalArgs, options: TarballOptions) -> anyhow::Result<ExitCode> {
    // The user data first: a mistake in it is found in a moment, not after the disk is made.
    let user_data = match &options.user_data {
        Some(path) => match UserData::read(path) {
            Ok(user_data) => Some(user_data),
            Err(problem) => return refused(&[problem]),
        },
        None => None,
    };
    let request = TarballRequest {
        tarball: options.tarball.clone(),
        user_data,
        hostname: options.hostname,
        work_dir: options.work_dir,
        console_log: options.console_log,
        boot_timeout: options.boot_timeout,
    };
    let result = run_cancellable(
        global,
        String::new(),
        "check `losetup -a` for a loop device on a caph-image-verify-* file and detach it with `losetup -d`",
        async |context: Context, _| caph_boot::verify::verify_tarball(&context, &request).await,
    )?;
    match result {
        Ok(report) => {
            print_tarball_report(global, &options.tarball, &report);
            Ok(exit_code(&report.findings))
        }
        Err(BootError::Input(problems)) => refused(&problems),
        Err(BootError::Cancelled { phase, cleanup }) => {
            output::error(&format!("cancelled during {phase}; {cleanup}"));
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}

fn print_tarball_report(global: &GlobalArgs, tarball: &std::path::Path, report: &TarballReport) {
    match global.output {
        OutputFormat::Json => output::json(&json!({
            "kind": "tarball",
            "tarball": {
                "path": tarball.display().to_string(),
                "distribution": report.tarball.distribution,
                "compression": report.tarball.compression,
                "unpacked_bytes": report.tarball.unpacked_bytes,
                "kernels": report.tarball.kernels,
            },
            "passed": report.passed(),
            "boot_seconds": report.boot_duration.as_secs_f64(),
            "console_log": report.console_log.as_ref().map(|path| path.display().to_string()),
            "findings": findings_json(&report.findings),
        })),
        OutputFormat::Text => {
            output::result(&format!(
                "{}: {}, {}, {:.2} GB unpacked, {}; first boot under QEMU took {:.0}s",
                escape(&tarball.display().to_string()),
                escape(&report.tarball.distribution),
                report.tarball.compression,
                report.tarball.unpacked_bytes as f64 / 1e9,
                escape(&report.tarball.kernels.join(", ")),
                report.boot_duration.as_secs_f64()
            ));
            print_table(&report.findings);
            if let Some(path) = &report.console_log {
                output::result(&format!(
                    "the serial console's log: {}",
                    escape(&path.display().to_string())
                ));
            }
        }
    }
}

/// Options of `verify hcloud`.
#[derive(Debug)]
pub struct HcloudOptions<'a> {
    pub snapshot: String,
    pub arch: Option<caph_core::Arch>,
    pub locations: Vec<String>,
    pub server_types: Vec<String>,
    pub boot_timeout: Duration,
    /// `--sim` with its `--sim-speed`: a simulator in this process.
    pub sim: Option<f64>,
    pub api: &'a crate::cli::HcloudArgs,
}

pub fn hcloud(global: &GlobalArgs, options: HcloudOptions<'_>) -> anyhow::Result<ExitCode> {
    use caph_core::backend::BackendError;
    use caph_hcloud::backend::verify::{ImageRef, VerifyRequest};
    use caph_hcloud::backend::{HcloudBackend, HcloudBackendConfig, naming};

    let request = VerifyRequest {
        image: ImageRef::parse(&options.snapshot),
        arch: options.arch,
        locations: options.locations,
        server_types: options.server_types,
        boot_timeout: options.boot_timeout,
    };
    let simulated = match options.sim {
        None => None,
        Some(_) if options.api.endpoint != caph_hcloud::DEFAULT_ENDPOINT => {
            output::error(&format!(
                "--sim verifies against its own simulated API, not {}: leave out --endpoint and unset HCLOUD_ENDPOINT",
                options.api.endpoint
            ));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Some(speed) => match &request.image {
            ImageRef::Name(name) => Some((
                speed,
                name.clone(),
                options.arch.unwrap_or(caph_core::Arch::X86),
            )),
            ImageRef::Id(_) => {
                return refused(&[
                    "--sim verifies a system image of the simulator by its name (debian-12, ubuntu-22.04, ubuntu-24.04), not by an id".to_string(),
                ]);
            }
        },
    };
    let client = match simulated {
        Some(_) => None,
        None => Some(super::hcloud::client(options.api)?),
    };
    let build_id = naming::new_build_id();
    output::note(&format!(
        "verify {build_id}: {}",
        escape(&request.image.to_string())
    ));
    let config = HcloudBackendConfig::new(format!("caph-image {}", env!("CARGO_PKG_VERSION")));
    let result = run_cancellable(
        global,
        build_id.clone(),
        "run `caph-image gc` to remove what is left",
        async |context: Context, progress| {
            // The simulator lives as long as this future: it stops, and its machines go, with
            // the runtime at the end of the command.
            let sim = match &simulated {
                Some((speed, name, arch)) => Some(
                    super::hcloud::SimCloud::start(
                        *speed,
                        &[(name.clone(), *arch)],
                        &progress,
                        false,
                        "caph-image verify hcloud IMAGE --sim",
                    )
                    .await?,
                ),
                None => None,
            };
            let client = match (&sim, client) {
                (Some(sim), _) => sim.client()?,
                (None, Some(client)) => client,
                (None, None) => anyhow::bail!("no API to verify against"),
            };
            let backend = HcloudBackend::new(client, config);
            anyhow::Ok(backend.verify(&context, &request).await)
        },
    )??;
    match result {
        Ok(report) => {
            match global.output {
                OutputFormat::Json => output::json(&json!({
                    "kind": "hcloud",
                    "run_id": build_id,
                    "image": {
                        "id": report.image.id,
                        "name": report.image.name,
                        "architecture": report.image.arch.hcloud_name(),
                        "description": report.image.description,
                    },
                    "server": report.ran_on,
                    "passed": report.passed(),
                    "duration_seconds": report.duration.as_secs_f64(),
                    "findings": findings_json(&report.findings),
                })),
                OutputFormat::Text => {
                    output::result(&format!(
                        "image {} ({}, {}): first boot on {} took {:.0}s; the server and its key are deleted",
                        report.image.id,
                        escape(&report.image.name),
                        report.image.arch,
                        escape(&report.ran_on),
                        report.duration.as_secs_f64()
                    ));
                    print_table(&report.findings);
                }
            }
            Ok(exit_code(&report.findings))
        }
        Err(BackendError::Preflight(problems)) => refused(&problems),
        Err(BackendError::Cancelled { phase, cleanup }) => {
            output::error(&format!("cancelled during {phase}; {cleanup}"));
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}
