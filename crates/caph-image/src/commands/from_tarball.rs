//! `caph-image build hcloud SPEC --from-tarball [TARBALL]`: the spec's installimage tarball,
//! built first when not given, written onto a Hetzner Cloud server's disk from its rescue system
//! and snapshotted (`caph_hcloud::backend::from_tarball`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use caph_boot::tarball::TarballContents;
use caph_core::backend::{Backend as _, BackendError, BuildRequest, Context};
use caph_core::text::escape;
use caph_core::{Arch, ImageSpec};
use caph_hcloud::backend::from_tarball::{self, InspectedTarball, TarballBuild};
use caph_hcloud::backend::{HcloudBackend, naming};
use caph_rootfs::assemble::{self, AssembleOptions};
use caph_rootfs::naming::ImageName;
use tokio_util::sync::CancellationToken;

use super::hcloud::{BuildOptions, TarballPrinted, backend_config, client, print_artifacts};
use super::{EXIT_CANCELLED, cancel_on_signals, runtime};
use crate::cli::{EXIT_FAILURE, GlobalArgs};
use crate::output;
use crate::progress::Progress;

/// Where the tarball comes from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The tarball given, or `None` to build it first.
    pub tarball: Option<&'a Path>,
    /// Where a built tarball goes.
    pub output_dir: &'a Path,
}

impl Source<'_> {
    /// The architecture when `--arch` does not say: the given tarball's, by installimage's naming
    /// rule, else x86 (the one architecture whose cloud servers this flow can make boot).
    pub fn implied_arch(&self) -> Arch {
        self.tarball.and_then(named_arch).unwrap_or(Arch::X86)
    }
}

/// The architecture a tarball's file name says (`Debian-1200-bookworm-amd64-...`), if it follows
/// installimage's rule.
fn named_arch(tarball: &Path) -> Option<Arch> {
    let name = tarball.file_name()?.to_str()?;
    ImageName::parse(name).ok().map(|(name, _)| name.arch())
}

/// The sha256 in the `.sha256` file beside `tarball` (`sha256sum`'s format, as `build tarball`
/// and `pack` write it), when there is one.
fn recorded_sha256(tarball: &Path) -> anyhow::Result<Option<String>> {
    let path = caph_rootfs::pack::checksum_path(tarball);
    if !path.exists() {
        return Ok(None);
    }
    let text = caph_rootfs::input::read_regular(&path, 4096)
        .map_err(|error| anyhow::anyhow!("{}", error.rule()))?;
    let text = String::from_utf8_lossy(&text);
    let Some(digest) = text
        .split_whitespace()
        .next()
        .and_then(caph_core::digest::Sha256Hex::parse)
    else {
        anyhow::bail!(
            "{}: not a sha256 file (64 hex digits, then the file name); remove it or write it with sha256sum",
            path.display()
        );
    };
    Ok(Some(digest.to_string()))
}

pub fn build(
    global: &GlobalArgs,
    options: &BuildOptions<'_>,
    source: &Source<'_>,
    spec: ImageSpec,
    architectures: &[Arch],
) -> anyhow::Result<ExitCode> {
    let [arch] = architectures else {
        anyhow::bail!(
            "--from-tarball makes one architecture's snapshot (one tarball is one architecture); pass --arch x86"
        );
    };
    let arch = *arch;
    // Everything local is checked before the API or a tarball build.
    let mut expected_sha256 = None;
    if let Some(tarball) = source.tarball {
        caph_rootfs::input::open_regular(tarball)
            .map_err(|error| anyhow::anyhow!("--from-tarball {}", error.rule()))?;
        if let Some(named) = named_arch(tarball)
            && named != arch
        {
            anyhow::bail!(
                "--from-tarball {}: its name says {}, but --arch says {arch}",
                tarball.display(),
                named.debian_name()
            );
        }
        expected_sha256 = recorded_sha256(tarball)?;
    }
    if let Err(reason) = from_tarball::supports(arch) {
        anyhow::bail!("--from-tarball --arch {arch}: {reason}");
    }
    // A tarball to build first needs what `build tarball` needs; said now, not after preflight.
    if source.tarball.is_none() && !options.dry_run {
        let missing = assemble::missing_requirements(&spec, arch);
        if !missing.is_empty() {
            anyhow::bail!(
                "--from-tarball without TARBALL builds the tarball first, and {}; or give a tarball: --from-tarball FILE",
                missing.join("; ")
            );
        }
    }
    let spec = Arc::new(spec);
    let request = BuildRequest {
        spec: spec.clone(),
        architectures: vec![arch],
        replace: options.replace,
        keep_on_error: options.keep_on_error,
    };
    let runtime = runtime()?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let context = Context {
        progress: progress.clone(),
        cancel: CancellationToken::new(),
        build_id: naming::new_build_id(),
    };
    // What the tarball is, then what it holds, before the API is asked anything.
    let inspect = |tarball: &Path| -> anyhow::Result<InspectedTarball> {
        runtime
            .block_on(from_tarball::inspect(tarball))
            .map_err(anyhow::Error::new)
    };
    let given = source.tarball.map(inspect).transpose()?;
    let content_problems = match source.tarball {
        Some(tarball) => runtime
            .block_on(TarballContents::read(tarball, &context.cancel))
            .map_err(anyhow::Error::new)?
            .cloud_disk_problems()
            .into_iter()
            .map(|problem| format!("{arch}: --from-tarball {}: {problem}", tarball.display()))
            .collect(),
        None => Vec::new(),
    };
    if !content_problems.is_empty() && !options.dry_run {
        return Err(anyhow::Error::new(BackendError::Preflight(
            content_problems,
        )));
    }
    let backend = HcloudBackend::new(client(options.api)?, backend_config());

    // The build's preflight before a tarball build of minutes: a taken name or a sold-out
    // type is known now.
    let report = runtime
        .block_on(backend.preflight(&context, &request))
        .map_err(anyhow::Error::new)?;
    if options.dry_run {
        for check in &report.checks {
            output::result(&format!("ok: {check}"));
        }
        for problem in report.problems.iter().chain(&content_problems) {
            output::result(&format!("problem: {problem}"));
        }
        let shown = match (&given, source.tarball) {
            (Some(inspected), Some(tarball)) => {
                output::result(&format!(
                    "ok: {arch}: {}: {}",
                    tarball.display(),
                    inspected.description
                ));
                inspected.clone()
            }
            _ => {
                output::result(&format!(
                    "ok: {arch}: the tarball would be built first into {} (build tarball)",
                    source.output_dir.display()
                ));
                InspectedTarball {
                    compression: caph_hcloud::backend::disk_image::Compression::Gzip,
                    bytes: 0,
                    description: "the gzip-compressed tarball".to_string(),
                }
            }
        };
        output::script(&from_tarball::script_for_display(&shown));
        output::note(
            "dry run: nothing was created; the spec's plan does not run on the server with --from-tarball",
        );
        return Ok(
            if report.problems.is_empty() && content_problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            },
        );
    }
    if !report.problems.is_empty() {
        return Err(anyhow::Error::new(BackendError::Preflight(report.problems)));
    }

    // One handler for the whole run: Ctrl-C stops the tarball's build if it is being built, and
    // the cloud build (which then cleans up through its ledger).
    let tarball_cancel = caph_rootfs::pack::Cancel::new();
    let (token, stop_tarball) = (context.cancel.clone(), tarball_cancel.clone());
    cancel_on_signals(
        &runtime,
        move || {
            stop_tarball.cancel();
            token.cancel();
        },
        "run `caph-image gc` to remove what is left; a tarball's build may leave a .caph-rootfs-* work directory and its mounts".to_string(),
    );
    let tarball: PathBuf = match source.tarball {
        Some(tarball) => tarball.to_path_buf(),
        None => {
            let built =
                build_tarball(&progress, options.spec, &spec, arch, source, tarball_cancel)?;
            let Some((tarball, sha256)) = built else {
                return Ok(ExitCode::from(EXIT_CANCELLED));
            };
            expected_sha256 = Some(sha256);
            tarball
        }
    };
    output::note(&format!(
        "build {}: {} for {arch} from the tarball {}{}",
        context.build_id,
        spec.image.name,
        escape(&tarball.display().to_string()),
        expected_sha256
            .as_ref()
            .map(|sha256| format!(" (sha256 {sha256})"))
            .unwrap_or_default()
    ));
    let build = TarballBuild {
        spec: spec.clone(),
        arch,
        tarball: tarball.clone(),
        sha256: expected_sha256,
        replace: options.replace,
        keep_on_error: options.keep_on_error,
    };
    let result = runtime.block_on(backend.build_from_tarball(&context, &build));
    progress.finish();
    match result {
        Ok(made) => {
            print_artifacts(
                global,
                &context.build_id,
                &spec,
                std::slice::from_ref(&made.artifact),
                None,
                Some(&TarballPrinted {
                    file: &tarball,
                    sha256: &made.sha256,
                }),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(BackendError::Cancelled { phase, cleanup }) => {
            output::error(&format!("cancelled during {phase}; {cleanup}"));
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}

/// Builds the tarball as `build tarball` does, stopped by `cancel`; its path and sha256, or
/// `None` when cancelled.
fn build_tarball(
    progress: &Arc<Progress>,
    spec_path: &Path,
    spec: &ImageSpec,
    arch: Arch,
    source: &Source<'_>,
    cancel: caph_rootfs::pack::Cancel,
) -> anyhow::Result<Option<(PathBuf, String)>> {
    let spec_dir = spec_path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut options = AssembleOptions::new(arch, spec_dir, source.output_dir.to_path_buf());
    options.build_id = naming::new_build_id();
    options.builder = format!("caph-image {}", env!("CARGO_PKG_VERSION"));
    options.source_date_epoch =
        caph_rootfs::pack::source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())?;
    options.cancel = cancel;
    output::note(&format!(
        "build {}: building the {} tarball of {} first",
        options.build_id,
        arch.debian_name(),
        spec.image.name
    ));
    match assemble::assemble(spec, &options, progress.as_ref()) {
        Ok(assembled) => {
            output::note(&format!(
                "tarball {} ({} bytes, sha256 {}) built in {:.0}s",
                escape(&assembled.tarball.display().to_string()),
                assembled.summary.bytes_out,
                assembled.summary.sha256,
                assembled.duration.as_secs_f64()
            ));
            Ok(Some((assembled.tarball, assembled.summary.sha256)))
        }
        Err(assemble::AssembleError::Cancelled) => {
            output::error(
                "cancelled; the chroot's mounts were undone and the work directory removed",
            );
            Ok(None)
        }
        Err(error) => Err(anyhow::Error::new(error))
            .with_context(|| format!("building the tarball of {}", spec_path.display())),
    }
}
