//! Assembling an installimage root filesystem locally: the spec's base (mmdebstrap, or a pinned
//! base tarball), the boot chain installimage needs, then **the same plan** as the hcloud backend
//! run step by step in a chroot, then the reproducible tarball with its `.sha256` and manifest.
//!
//! Needs root: [`missing_requirements`] says what the host lacks, and [`assemble`] refuses to
//! start until nothing is missing. The chroot's mounts live in a [`BuildEnvironment`] guard, so
//! they are undone on success, on error and on cancellation alike; the work directory is removed
//! only once nothing is mounted below it ([`remove_work_dir`]).

mod base;
mod mounts;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use caph_core::backend::{Phase, ProgressEvent, ProgressSink};
use caph_core::plan::{self, Action, BuildStamp, Plan, Step, Target};
use caph_core::spec::RootfsBase;
use caph_core::{Arch, ImageSpec};

pub use base::{
    BOOT_CHAIN_PACKAGES, DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, UBUNTU_MIRROR, UBUNTU_PORTS_MIRROR,
    boot_chain, default_mirror, host_arch, missing_requirements, unpack_base_tarball,
};
pub use mounts::{BuildEnvironment, POLICY_RC_D, mounts_under, remove_work_dir};
pub use run::{FAILURE_TAIL_LINES, run_plan_in_chroot};

use crate::manifest::{self, Manifest, ManifestInput, Package};
use crate::naming::{ImageName, NameError};
use crate::pack::{self, Cancel, Compression, PackError, PackEvent, PackOptions, PackSummary};

/// Why an assembly failed. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The host lacks something (root, a program, a binfmt handler); nothing was done.
    #[error("{}", .0.join("\n"))]
    Requirements(Vec<String>),
    /// The spec cannot be built as a tarball.
    #[error("{0}")]
    Spec(String),
    /// The tarball's name would not follow installimage's rule.
    #[error("the tarball name: {0}")]
    Name(#[from] NameError),
    /// Making the base tree failed.
    #[error("{0}")]
    Base(String),
    /// The base tarball's sha256 is not the pinned one; nothing was extracted.
    #[error(
        "the base tarball {location} has sha256 {actual}, but the spec pins {expected}; refusing it"
    )]
    ChecksumMismatch {
        /// Where it came from.
        location: String,
        /// The spec's pin.
        expected: String,
        /// What the file hashed to.
        actual: String,
    },
    /// Mounting, unmounting or preparing the chroot failed.
    #[error("{what} at {}: {source}", target.display())]
    Mount {
        /// The path involved.
        target: PathBuf,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The work directory still has mounts below it, so it was not removed.
    #[error(
        "{} still has mounts below it ({}); it was left in place: unmount them, then remove it",
        work_dir.display(),
        mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    StillMounted {
        /// The work directory.
        work_dir: PathBuf,
        /// The mount points found.
        mounts: Vec<PathBuf>,
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
        /// Its exit status (`1`, or `signal 9`).
        status: String,
        /// Its last output lines, indented.
        tail: String,
    },
    /// Packing the tree failed.
    #[error("packing the root filesystem: {0}")]
    Pack(#[from] PackError),
    /// The plan refused a value (one that validation lets through never gets here).
    #[error("rendering the plan: {0}")]
    Plan(#[from] caph_core::text::UnsafeLine),
    /// Any other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// [`AssembleOptions::cancel`] was set; mounts and the work directory were cleaned up.
    #[error("cancelled")]
    Cancelled,
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// The architecture to build for.
    pub arch: Arch,
    /// The directory of the spec: a base tarball's path is relative to it.
    pub spec_dir: PathBuf,
    /// Where the tarball, its `.sha256` and manifest go (created if missing).
    pub output_dir: PathBuf,
    /// The compression (gzip by default: Cluster API Provider Hetzner's URL field takes no zstd).
    pub compression: Compression,
    /// Where the work directory is made; `None` means inside `output_dir` (same file system as
    /// the output, and usually more room than /var/tmp).
    pub work_parent: Option<PathBuf>,
    /// Keep the work directory (with the assembled tree in `root/`) instead of removing it.
    pub keep_work_dir: bool,
    /// mtimes are clamped to this, and it is the build time, when set (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// The build id exported to the plan as `CAPH_BUILD_ID`.
    pub build_id: String,
    /// `caph-image <version>`, exported as `CAPH_BUILDER`.
    pub builder: String,
    /// Set to stop: the running command is terminated, mounts undone, the work dir removed.
    pub cancel: Cancel,
}

impl AssembleOptions {
    /// Options with gzip, the work directory inside `output_dir`, and a fresh cancel flag.
    pub fn new(arch: Arch, spec_dir: PathBuf, output_dir: PathBuf) -> AssembleOptions {
        AssembleOptions {
            arch,
            spec_dir,
            output_dir,
            compression: Compression::gzip(),
            work_parent: None,
            keep_work_dir: false,
            source_date_epoch: None,
            build_id: String::from("local"),
            builder: format!("caph-rootfs {}", env!("CARGO_PKG_VERSION")),
            cancel: Cancel::new(),
        }
    }
}

/// What [`assemble`] made.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The tarball, named by installimage's rule.
    pub tarball: PathBuf,
    /// Its `.sha256` beside it.
    pub checksum: PathBuf,
    /// The JSON manifest beside it.
    pub manifest_path: PathBuf,
    /// The manifest's content.
    pub manifest: Manifest,
    /// What the writer reported.
    pub summary: PackSummary,
    /// The work directory, when it was kept.
    pub kept_work_dir: Option<PathBuf>,
    /// Time spent per phase: `base`, `provision`, `pack`.
    pub timings: Vec<(&'static str, Duration)>,
    /// The whole run.
    pub duration: Duration,
}

/// The file name of the tarball for `spec`, `arch` and `compression`, by installimage's rule.
pub fn tarball_name(
    spec: &ImageSpec,
    arch: Arch,
    compression: Compression,
) -> Result<String, AssembleError> {
    let file_name = format!(
        "{}.{}",
        spec.base.installimage_stem(arch),
        compression.extension()
    );
    // Parsed back to be sure installimage reads it as what it is.
    ImageName::parse(&file_name)?;
    Ok(file_name)
}

/// Builds the tarball of `spec` for `options.arch`: base, boot chain, plan in a chroot, pack.
///
/// Progress goes to `progress` with the architecture's Debian name as scope. On any error or on
/// cancellation the chroot's mounts are undone and the work directory removed (unless kept).
pub fn assemble(
    spec: &ImageSpec,
    options: &AssembleOptions,
    progress: &dyn ProgressSink,
) -> Result<Assembled, AssembleError> {
    let started = Instant::now();
    let arch = options.arch;
    let scope = arch.debian_name().to_owned();
    let phase = |phase: Phase, detail: String| {
        progress.event(ProgressEvent::Phase {
            scope: scope.clone(),
            phase,
            detail,
        });
    };
    phase(Phase::Preflight, "checking the host".to_owned());
    let Some(rootfs) = spec.base.rootfs.as_ref() else {
        return Err(AssembleError::Spec(format!(
            "{}: the spec has no [base.rootfs] table; add `suite = \"{}\"` (mmdebstrap) or \
             `tarball` and `sha256` to it",
            spec.file, spec.base.codename
        )));
    };
    let file_name = tarball_name(spec, arch, options.compression)?;
    options.compression.validate()?;
    let missing = missing_requirements(spec, arch);
    if !missing.is_empty() {
        return Err(AssembleError::Requirements(missing));
    }
    let io = |what: String| move |source: std::io::Error| AssembleError::Io { what, source };
    std::fs::create_dir_all(&options.output_dir).map_err(io(format!(
        "creating the output directory {}",
        options.output_dir.display()
    )))?;
    let output_dir = options
        .output_dir
        .canonicalize()
        .map_err(io(format!("resolving {}", options.output_dir.display())))?;
    let work_parent = options.work_parent.clone().unwrap_or(output_dir.clone());
    let work = tempfile::Builder::new()
        .prefix(".caph-rootfs-")
        .tempdir_in(&work_parent)
        .map_err(io(format!(
            "creating a work directory in {}",
            work_parent.display()
        )))?
        .keep();
    let work = work
        .canonicalize()
        .map_err(io(format!("resolving {}", work.display())))?;
    // Declared before anything mounts, so it is dropped after the mounts are gone.
    let mut work_guard = WorkDir {
        path: work.clone(),
        keep: options.keep_work_dir,
    };
    let built = build_and_pack(
        spec,
        options,
        progress,
        rootfs,
        &work,
        &output_dir,
        &file_name,
    );
    let built = match built {
        Ok(built) => built,
        Err(error) => {
            if options.keep_work_dir {
                progress.event(ProgressEvent::Warning {
                    scope: scope.clone(),
                    message: format!("the work directory {} was kept", work.display()),
                });
            } else {
                phase(
                    Phase::Cleanup,
                    format!(
                        "after {}: removing {}",
                        failure_kind(&error),
                        work.display()
                    ),
                );
                work_guard.keep = true;
                if let Err(cleanup) = remove_work_dir(&work) {
                    progress.event(ProgressEvent::Warning {
                        scope: scope.clone(),
                        message: cleanup.to_string(),
                    });
                }
            }
            return Err(error);
        }
    };
    let Built {
        output,
        manifest_path,
        manifest,
        summary,
        timings,
    } = built;
    phase(Phase::Cleanup, format!("removing {}", work.display()));
    let kept_work_dir = if options.keep_work_dir {
        Some(work.clone())
    } else {
        work_guard.keep = true;
        remove_work_dir(&work)?;
        None
    };
    phase(Phase::Done, file_name.clone());
    Ok(Assembled {
        checksum: pack::checksum_path(&output),
        tarball: output,
        manifest_path,
        manifest,
        summary,
        kept_work_dir,
        timings,
        duration: started.elapsed(),
    })
}

/// What [`build_and_pack`] made.
struct Built {
    output: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    summary: PackSummary,
    timings: Vec<(&'static str, Duration)>,
}

fn failure_kind(error: &AssembleError) -> &'static str {
    match error {
        AssembleError::Cancelled => "cancellation",
        _ => "the failure",
    }
}

/// The base, the plan in the chroot, and the pack, in `work`.
fn build_and_pack(
    spec: &ImageSpec,
    options: &AssembleOptions,
    progress: &dyn ProgressSink,
    rootfs: &RootfsBase,
    work: &Path,
    output_dir: &Path,
    file_name: &str,
) -> Result<Built, AssembleError> {
    let arch = options.arch;
    let scope = arch.debian_name().to_owned();
    let phase = |phase: Phase, detail: String| {
        progress.event(ProgressEvent::Phase {
            scope: scope.clone(),
            phase,
            detail,
        });
    };
    let root = work.join("root");
    let mut timings = Vec::new();

    // Base.
    let base_started = Instant::now();
    match rootfs {
        RootfsBase::Mmdebstrap {
            suite,
            mirror,
            variant,
            components,
        } => {
            phase(
                Phase::Create,
                format!("mmdebstrap {suite} {} ({variant})", arch.debian_name()),
            );
            base::mmdebstrap(
                spec,
                suite,
                mirror.as_deref(),
                variant,
                components,
                arch,
                &root,
                &scope,
                &options.cancel,
                progress,
            )?;
        }
        RootfsBase::Tarball { location, sha256 } => {
            phase(Phase::Create, format!("base tarball {location}"));
            unpack_base_tarball(
                location,
                sha256,
                &options.spec_dir,
                work,
                &root,
                &scope,
                &options.cancel,
                progress,
            )?;
        }
    }
    timings.push(("base", base_started.elapsed()));

    // The plan, in the chroot.
    let provision_started = Instant::now();
    let build_time_unix = manifest::build_time(options.source_date_epoch);
    let stamp = BuildStamp {
        build_id: options.build_id.clone(),
        build_time: caph_core::time::rfc3339_utc(build_time_unix),
        builder: options.builder.clone(),
        build_public_key: None,
    };
    let plan = plan::render(spec, Target::Tarball, arch)?;
    {
        let environment = BuildEnvironment::enter(&root)?;
        if matches!(rootfs, RootfsBase::Tarball { .. }) {
            // mmdebstrap included the boot chain; a base tarball gets it through apt.
            run_plan_in_chroot(
                &root,
                &boot_chain_plan(spec, arch),
                &stamp,
                &scope,
                &options.cancel,
                progress,
            )?;
        }
        run_plan_in_chroot(&root, &plan, &stamp, &scope, &options.cancel, progress)?;
        for path in environment.leave()? {
            progress.event(ProgressEvent::Warning {
                scope: scope.clone(),
                message: format!(
                    "{} was busy and was detached lazily (a process from the build still uses it)",
                    path.display()
                ),
            });
        }
    }
    settle_hostname(&root)?;
    timings.push(("provision", provision_started.elapsed()));

    // Pack.
    let pack_started = Instant::now();
    phase(Phase::Capture, format!("packing {file_name}"));
    let packages = installed_packages(&root)?;
    let output = output_dir.join(file_name);
    let mut pack_options = PackOptions::rootfs(options.compression);
    pack_options.source_date_epoch = options.source_date_epoch;
    pack_options.cancel = options.cancel.clone();
    let summary = pack::pack_to_path(&root, &output, &pack_options, &mut |event| match event {
        PackEvent::Progress(report) => {
            progress.event(ProgressEvent::Phase {
                scope: scope.clone(),
                phase: Phase::Capture,
                detail: describe_pack_progress(&report),
            });
            progress.event(ProgressEvent::Bytes {
                scope: scope.clone(),
                done: report.bytes_in,
                total: None,
            });
        }
        PackEvent::Warning(warning) => progress.event(ProgressEvent::Warning {
            scope: scope.clone(),
            message: warning.to_string(),
        }),
    })
    .map_err(|error| match error {
        PackError::Cancelled => AssembleError::Cancelled,
        other => AssembleError::Pack(other),
    })?;
    let mut versions = BTreeMap::new();
    versions.insert(
        spec.base.distribution.name().to_owned(),
        spec.base.version.clone(),
    );
    versions.insert("kubernetes".to_owned(), spec.kubernetes.version.to_string());
    versions.insert("containerd".to_owned(), spec.containerd.version.to_string());
    versions.insert("runc".to_owned(), spec.runc.version.to_string());
    versions.insert("crictl".to_owned(), spec.crictl.version.to_string());
    if let Some(kernel) = packages
        .iter()
        .find(|package| package.name.starts_with("linux-image-") && package.name.contains('.'))
    {
        versions.insert(
            "kernel".to_owned(),
            kernel.name["linux-image-".len()..].to_owned(),
        );
    }
    let manifest = Manifest::new(
        ManifestInput {
            spec_name: spec.image.name.clone(),
            spec_digest: spec.digest.clone(),
            versions,
            packages,
        },
        file_name,
        &summary,
        build_time_unix,
    );
    let manifest_path = manifest::write_manifest(&output, &manifest)?;
    timings.push(("pack", pack_started.elapsed()));

    Ok(Built {
        output,
        manifest_path,
        manifest,
        summary,
        timings,
    })
}

/// Removes the work directory when dropped (on errors and cancellation), unless kept; never
/// while something is mounted below it.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            // On failure there is no one to tell; a directory with mounts below it stays.
            let _ = remove_work_dir(&self.path);
        }
    }
}

/// The step that installs the boot chain into a base tarball's tree through apt.
fn boot_chain_plan(spec: &ImageSpec, arch: Arch) -> Plan {
    let packages: Vec<String> = boot_chain(&spec.base, arch)
        .into_iter()
        .map(plan::quote)
        .collect();
    let script = format!(
        "set -euo pipefail\nexport DEBIAN_FRONTEND=noninteractive\n\
         apt-get -o Dpkg::Options::=--force-confold update\n\
         apt-get -o Dpkg::Options::=--force-confold install -y --no-install-recommends {}\n",
        packages.join(" ")
    );
    Plan {
        image_name: spec.image.name.clone(),
        spec_digest: spec.digest.clone(),
        target: Target::Tarball,
        arch,
        steps: vec![Step {
            name: "boot-chain".to_owned(),
            action: Action::Run { script },
        }],
    }
}

/// mmdebstrap copies the build host's name into the tree; an image must not carry it.
/// installimage writes the real one.
fn settle_hostname(root: &Path) -> Result<(), AssembleError> {
    let path = root.join("etc/hostname");
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let tree = std::fs::read_to_string(&path).ok();
    let leaked = tree
        .as_deref()
        .is_some_and(|name| !host.trim().is_empty() && name.trim() == host.trim());
    if tree.is_none() || leaked {
        std::fs::write(&path, "localhost\n").map_err(|source| AssembleError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// The packages installed in the tree, from its dpkg database.
pub fn installed_packages(root: &Path) -> Result<Vec<Package>, AssembleError> {
    let admin = root.join("var/lib/dpkg");
    let output = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ])
        .output()
        .map_err(|source| AssembleError::Io {
            what: "running dpkg-query (Debian package dpkg)".to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(AssembleError::Base(format!(
            "dpkg-query --admindir={} failed: {}",
            admin.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut packages: Vec<Package> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let status = fields.next()?;
            let name = fields.next()?;
            let version = fields.next()?;
            let architecture = fields.next().filter(|a| !a.is_empty());
            // Only installed packages ("ii"), not removed ones with config left ("rc").
            status.starts_with("ii").then(|| Package {
                name: name.to_owned(),
                version: version.to_owned(),
                architecture: architecture.map(str::to_owned),
            })
        })
        .collect();
    packages.sort();
    Ok(packages)
}

/// `12,345 files, 1.2 GB in, 400 MB out, 250 MB/s`.
pub fn describe_pack_progress(report: &pack::Progress) -> String {
    let seconds = report.elapsed.as_secs_f64().max(0.001);
    format!(
        "{} files, {:.1} MB in, {:.1} MB out, {:.0} MB/s",
        report.files,
        report.bytes_in as f64 / 1e6,
        report.bytes_out as f64 / 1e6,
        report.bytes_in as f64 / 1e6 / seconds
    )
}
