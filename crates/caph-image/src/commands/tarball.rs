//! `caph-image build tarball` (assemble a root filesystem locally and pack it) and `caph-image
//! pack` (the writer alone): both print the result and the `HetznerBareMetalMachineTemplate`
//! that installs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use caph_core::Arch;
use caph_core::backend::{Phase, ProgressEvent, ProgressSink};
use caph_core::spec::DiskLayout;
use caph_hcloud::backend::naming;
use caph_rootfs::assemble::{self, AssembleError, AssembleOptions};
use caph_rootfs::naming::provider_url_accepts;
use caph_rootfs::pack::{self, Compression, PackEvent, PackOptions, PackSummary};
use serde_json::json;

use super::{EXIT_CANCELLED, cancel_on_signals, runtime};
use crate::cli::{EXIT_FAILURE, GlobalArgs, OutputFormat};
use crate::progress::Progress;
use crate::{output, spec_files, templates};

/// Options of `build tarball`.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    pub spec: &'a Path,
    pub output_dir: &'a Path,
    pub compression: Compression,
    pub arch: Option<Arch>,
    pub work_dir: Option<&'a Path>,
    pub keep_work_dir: bool,
}

/// `SOURCE_DATE_EPOCH` from the environment, as reproducible-builds.org specifies it.
fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    Ok(pack::source_date_epoch(
        std::env::var_os("SOURCE_DATE_EPOCH").as_deref(),
    )?)
}

pub fn build(global: &GlobalArgs, options: BuildOptions<'_>) -> anyhow::Result<ExitCode> {
    let Some(spec) = spec_files::load_or_report(options.spec) else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let arch = match options.arch.or_else(assemble::host_arch) {
        Some(arch) => arch,
        None => {
            anyhow::bail!("this machine is neither amd64 nor arm64; say which to build with --arch")
        }
    };
    let spec_dir = options
        .spec
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut assemble_options =
        AssembleOptions::new(arch, spec_dir, options.output_dir.to_path_buf());
    assemble_options.compression = options.compression;
    assemble_options.work_parent = options.work_dir.map(Path::to_path_buf);
    assemble_options.keep_work_dir = options.keep_work_dir;
    assemble_options.source_date_epoch = source_date_epoch()?;
    assemble_options.build_id = naming::new_build_id();
    assemble_options.builder = format!("caph-image {}", env!("CARGO_PKG_VERSION"));
    let cancel = assemble_options.cancel.clone();

    output::note(&format!(
        "build {}: {} tarball for {}",
        assemble_options.build_id,
        spec.image.name,
        arch.debian_name()
    ));
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let runtime = runtime()?;
    cancel_on_signals(
        &runtime,
        move || cancel.cancel(),
        format!(
            "check `grep {} /proc/self/mountinfo` and remove the .caph-rootfs-* work directory",
            options.output_dir.display()
        ),
    );
    let spec = Arc::new(spec);
    let result = {
        let spec = spec.clone();
        let sink = progress.clone();
        runtime.block_on(async move {
            tokio::task::spawn_blocking(move || {
                assemble::assemble(&spec, &assemble_options, sink.as_ref())
            })
            .await
        })
    }
    .context("the build thread")?;
    progress.finish();
    match result {
        Ok(assembled) => {
            print_result(
                global,
                &Printed {
                    file: &assembled.tarball,
                    checksum: &assembled.checksum,
                    manifest: Some(&assembled.manifest_path),
                    summary: &assembled.summary,
                    duration: assembled.duration,
                    name: Some(&spec.image.name),
                    arch: Some(arch),
                    layout: spec.robot.as_ref().map(|robot| &robot.disk),
                    keep_swap: !spec.system.disable_swap,
                    kept_work_dir: assembled.kept_work_dir.as_deref(),
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(AssembleError::Cancelled) => {
            output::error(
                "cancelled; the chroot's mounts were undone and the work directory removed",
            );
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "building the {} tarball of {}",
            arch.debian_name(),
            options.spec.display()
        ))),
    }
}

pub fn pack(
    global: &GlobalArgs,
    dir: &Path,
    file: &Path,
    compression: Option<Compression>,
    plain: bool,
) -> anyhow::Result<ExitCode> {
    let file_name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Err(problem) = caph_core::text::check_field(&file_name) {
        anyhow::bail!(
            "{}: the file name {}: it goes into installimage's IMAGE line, the .sha256 file and the machine template, so it must be one word",
            file.display(),
            problem.describe()
        );
    }
    let implied = [
        (".tar.gz", Compression::gzip()),
        (".tgz", Compression::gzip()),
        (".tar.zst", Compression::zstd()),
        (".tar", Compression::None),
    ]
    .into_iter()
    .find(|(extension, _)| file_name.ends_with(extension))
    .map(|(_, compression)| compression);
    let compression = match (compression, implied) {
        (Some(given), Some(implied)) if given.name() != implied.name() => anyhow::bail!(
            "{}: the name says {} but --compression says {}; name it .{}",
            file.display(),
            implied.name(),
            given.name(),
            given.extension()
        ),
        (Some(given), _) => given,
        (None, Some(implied)) => implied,
        (None, None) => Compression::gzip(),
    };
    let mut options = if plain {
        PackOptions::plain(compression)
    } else {
        PackOptions::rootfs(compression)
    };
    options.source_date_epoch = source_date_epoch()?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let runtime = runtime()?;
    let cancel = options.cancel.clone();
    cancel_on_signals(
        &runtime,
        move || cancel.cancel(),
        "a partial .partial file may remain beside the output".to_owned(),
    );
    let scope = file_name.clone();
    let sink = progress.clone();
    let (source, output) = (dir.to_path_buf(), file.to_path_buf());
    let result = runtime
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                pack::pack_to_path(&source, &output, &options, &mut |event| match event {
                    PackEvent::Progress(report) => sink.event(ProgressEvent::Phase {
                        scope: scope.clone(),
                        phase: Phase::Capture,
                        detail: assemble::describe_pack_progress(&report),
                    }),
                    PackEvent::Warning(warning) => sink.event(ProgressEvent::Warning {
                        scope: scope.clone(),
                        message: warning.to_string(),
                    }),
                })
            })
            .await
        })
        .context("the packing thread")?;
    progress.finish();
    match result {
        Ok(summary) => {
            print_result(
                global,
                &Printed {
                    file,
                    checksum: &pack::checksum_path(file),
                    manifest: None,
                    duration: summary.duration,
                    summary: &summary,
                    name: None,
                    arch: None,
                    layout: None,
                    keep_swap: false,
                    kept_work_dir: None,
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(pack::PackError::Cancelled) => {
            output::error("cancelled; no output was left behind");
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "packing {} into {}",
            dir.display(),
            file.display()
        ))),
    }
}

/// What the result lines and JSON show.
struct Printed<'a> {
    file: &'a Path,
    checksum: &'a Path,
    manifest: Option<&'a Path>,
    summary: &'a PackSummary,
    duration: Duration,
    /// The spec's image name, for the template's metadata.
    name: Option<&'a str>,
    arch: Option<Arch>,
    /// The spec's disk layout, for the template.
    layout: Option<&'a DiskLayout>,
    /// The spec keeps swap (`disable_swap = false`), so the template keeps it too.
    keep_swap: bool,
    kept_work_dir: Option<&'a Path>,
}

/// The `HetznerBareMetalMachineTemplate` that installs the tarball `file_name` (see
/// [`templates::bare_metal_machine_template`]).
pub fn machine_template(
    file_name: &str,
    name: Option<&str>,
    arch: Option<Arch>,
    layout: Option<&DiskLayout>,
    keep_swap: bool,
) -> String {
    templates::bare_metal_machine_template(&templates::BareMetalTemplate {
        file_name,
        name,
        arch,
        layout,
        keep_swap,
    })
}

fn print_result(global: &GlobalArgs, printed: &Printed<'_>) {
    let file_name = printed
        .file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let template = machine_template(
        &file_name,
        printed.name,
        printed.arch,
        printed.layout,
        printed.keep_swap,
    );
    let url_accepted_as_named = provider_url_accepts(&file_name);
    let summary = printed.summary;
    match global.output {
        OutputFormat::Json => output::json(&json!({
            "file": printed.file,
            "checksum_file": printed.checksum,
            "manifest_file": printed.manifest,
            "compression": summary.compression.to_string(),
            "size_bytes": summary.bytes_out,
            "uncompressed_bytes": summary.bytes_in,
            "sha256": summary.sha256,
            "entries": summary.entries.total(),
            "entries_by_kind": summary.entries,
            "file_bytes": summary.file_bytes,
            "duration_seconds": printed.duration.as_secs_f64(),
            "work_dir": printed.kept_work_dir,
            "provider_url_accepted": url_accepted_as_named,
            "machine_template": template,
        })),
        OutputFormat::Text => {
            output::result(&format!("file:      {}", printed.file.display()));
            output::result(&format!(
                "size:      {} bytes ({:.1} MB; {:.1} MB uncompressed, {})",
                summary.bytes_out,
                summary.bytes_out as f64 / 1e6,
                summary.bytes_in as f64 / 1e6,
                summary.compression
            ));
            output::result(&format!("sha256:    {}", summary.sha256));
            output::result(&format!(
                "entries:   {} ({} files, {} directories, {} symlinks, {} hard links)",
                summary.entries.total(),
                summary.entries.regular,
                summary.entries.directories,
                summary.entries.symlinks,
                summary.entries.hardlinks
            ));
            output::result(&format!(
                "duration:  {:.1}s",
                printed.duration.as_secs_f64()
            ));
            output::result(&format!("checksum:  {}", printed.checksum.display()));
            if let Some(manifest) = printed.manifest {
                output::result(&format!("manifest:  {}", manifest.display()));
            }
            if let Some(work_dir) = printed.kept_work_dir {
                output::result(&format!("work dir:  {} (kept)", work_dir.display()));
            }
            output::result("");
            output::result(&format!(
                "Serve the tarball over http(s) as it is, replace {} in the url below with where it \
                 is served, and {} with the Secret of the SSH key Cluster API Provider Hetzner logs in with:",
                templates::URL_PLACEHOLDER,
                templates::SSH_SECRET_PLACEHOLDER
            ));
            output::result("---");
            output::result(template.trim_end());
        }
    }
}
