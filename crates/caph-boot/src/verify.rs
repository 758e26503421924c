//! `caph-image verify tarball`: a tarball's node, booted for real on this machine the way a
//! dedicated server boots it under Cluster API Provider Hetzner, and judged.
//!
//! In order: the tarball is looked at (bad input is refused before anything is made); a sparse
//! disk file on a loop device gets the tarball installed as installimage installs it
//! ([`crate::install`]), then the NoCloud seed CAPH's post-install script writes (meta-data with
//! the hostname and an instance id, and the user data: the caller's, or the probe shaped like
//! kubeadm's bootstrap) and a unit of this tool's that runs the node checks once cloud-init's
//! final stage is over and says so on the console; QEMU boots the disk through its own GRUB, with
//! progress while first boot runs and a deadline; the node is powered off with Ctrl-Alt-Del; the
//! disk is read back (cloud-init's status and result, the marker, host keys, machine id, the node
//! checks' output) and judged, with what the console showed.
//!
//! [`verify_installed_disk`] judges the first boot of a disk a node was installed on elsewhere
//! (installimage in a rescue system, in Cluster API Provider Hetzner's flow), its seed already in
//! place: the same unit, boot and judgement, on a disk it did not make.
//!
//! Nothing is left behind: the work directory (the disk file, the console, the staged files) is
//! removed, the loop device detached, every mount was in a namespace of its own, and QEMU is
//! killed if it still runs; on success, on every error and on cancellation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caph_core::backend::{Context, Phase, ProgressEvent};
use caph_core::checks::{self, Finding, FindingStatus, NodeCheck, NodePromise};
use caph_core::firstboot::{self, Evidence, Expectations, HostKeys, MachineId};

use crate::BootError;
use crate::install::{self, InstallRequest, PlacedFile};
use crate::installimage::Network;
use crate::loop_device::LoopDevice;
use crate::qemu::{self, Vm, VmConfig, Waited};
use crate::tarball::TarballContents;
use crate::user_data::UserData;

/// Where the node keeps what this tool's unit gathers.
const VERIFY_DIR: &str = "/var/lib/caph-image-verify";
/// The node checks' script on the node.
const FACTS_SCRIPT_PATH: &str = "/var/lib/caph-image-verify/node-facts.sh";
/// What the node checks printed, on the node.
const FACTS_OUTPUT_PATH: &str = "/var/lib/caph-image-verify/node-facts.out";
/// The unit that runs them.
const UNIT_PATH: &str = "/etc/systemd/system/caph-image-verify.service";
/// The drop-in by which cloud-init's final stage pulls the unit in.
const UNIT_DROP_IN_PATH: &str = "/etc/systemd/system/cloud-final.service.d/caph-image-verify.conf";
/// What the unit says on the console once the node checks are written.
const DONE_LINE: &str = "caph-image verify: node checks done";
/// The NoCloud seed directory, as CAPH's post-install script writes it.
const SEED_DIR: &str = "/var/lib/cloud/seed/nocloud-net";

/// How long a clean shutdown may take under emulation.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(120);
/// How often progress says it is still waiting.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);

/// What to verify, and how.
#[derive(Debug, Clone)]
pub struct TarballRequest {
    /// The tarball.
    pub tarball: PathBuf,
    /// The user data; `None` for the probe ([`firstboot::probe_user_data`]).
    pub user_data: Option<UserData>,
    /// The node's hostname (the seed's `local-hostname` and installimage's `HOSTNAME`).
    pub hostname: String,
    /// Where the work directory (the disk file, the console) is made and removed again.
    pub work_dir: PathBuf,
    /// Where to keep the serial console's log, if anywhere.
    pub console_log: Option<PathBuf>,
    /// How long first boot may take, from QEMU's start to the node checks' end.
    pub boot_timeout: Duration,
}

/// What the tarball is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballFacts {
    /// os-release's name.
    pub distribution: String,
    /// Its compression.
    pub compression: String,
    /// The bytes of its files.
    pub unpacked_bytes: u64,
    /// Its kernels.
    pub kernels: Vec<String>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballReport {
    /// What the tarball is.
    pub tarball: TarballFacts,
    /// One row per check, in order: the boot, first boot, the node checks.
    pub findings: Vec<Finding>,
    /// How long the VM ran.
    pub boot_duration: Duration,
    /// Where the console log was kept, if it was.
    pub console_log: Option<PathBuf>,
}

impl TarballReport {
    /// Whether no finding failed.
    pub fn passed(&self) -> bool {
        self.findings
            .iter()
            .all(|finding| finding.status != FindingStatus::Failed)
    }
}

/// The programs the local install and the boot need, each with its Debian package.
const PROGRAMS: &[(&str, &str)] = &[
    ("losetup", "util-linux"),
    ("partx", "util-linux"),
    ("delpart", "util-linux"),
    ("sfdisk", "fdisk"),
    ("unshare", "util-linux"),
    ("mke2fs", "e2fsprogs"),
    ("tar", "tar"),
    ("chroot", "coreutils"),
    (qemu::QEMU, "qemu-system-x86"),
];

fn program_exists(name: &str) -> bool {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|dir| Path::new(dir).join(name).is_file())
}

/// What this machine lacks to verify a tarball: root, and the programs (with their packages).
pub fn missing_requirements() -> Option<String> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push(format!(
            "root (running as uid {}): loop devices, mounts and chroot need it; run caph-image as root, for example with sudo",
            rustix::process::geteuid().as_raw()
        ));
    }
    let mut packages: Vec<&str> = Vec::new();
    for (program, package) in PROGRAMS {
        if !program_exists(program) {
            missing.push(format!("{program} (Debian package {package})"));
            if !packages.contains(package) {
                packages.push(package);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let mut text = format!("verifying a tarball needs: {}", missing.join("; "));
    if !packages.is_empty() {
        text.push_str(&format!("; to fix: apt-get install {}", packages.join(" ")));
    }
    Some(text)
}

/// Where the run is, for the message after a cancellation.
#[derive(Debug, Clone, Default)]
struct Stage(Arc<Mutex<&'static str>>);

impl Stage {
    fn set(&self, context: &Context, phase: Phase, name: &'static str, detail: String) {
        match self.0.lock() {
            Ok(mut guard) => *guard = name,
            Err(poisoned) => *poisoned.into_inner() = name,
        }
        context.progress.event(ProgressEvent::Phase {
            scope: "tarball".to_string(),
            phase,
            detail,
        });
    }

    fn get(&self) -> &'static str {
        match self.0.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

fn say(context: &Context, line: impl Into<String>) {
    context.progress.event(ProgressEvent::Output {
        scope: "tarball".to_string(),
        line: line.into(),
    });
}

/// Verifies a tarball; see the module documentation. Bad input is [`BootError::Input`], a
/// machine that cannot do it [`BootError::Machine`]; a node that fails a check is a report whose
/// [`TarballReport::passed`] is false.
pub async fn verify_tarball(
    context: &Context,
    request: &TarballRequest,
) -> Result<TarballReport, BootError> {
    let stage = Stage::default();
    until_cancelled(context, &stage, work(context, request, &stage)).await
}

/// Runs `work` until it ends or the context is cancelled. The work future is gone when this
/// returns, and with it the VM, the namespace, the loop device and the work directory (in that
/// order). A signal that also reached a child may have failed the work before the cancellation
/// was seen: it is a cancellation all the same, named by the stage it reached.
async fn until_cancelled<T>(
    context: &Context,
    stage: &Stage,
    work: impl Future<Output = Result<T, BootError>>,
) -> Result<T, BootError> {
    let result = tokio::select! {
        result = work => result,
        () = context.cancel.cancelled() => Err(BootError::Cancelled { phase: "", cleanup: String::new() }),
    };
    match result {
        Err(_) if context.cancel.is_cancelled() => Err(BootError::Cancelled {
            phase: match stage.get() {
                "" => "the start",
                phase => phase,
            },
            cleanup: "the VM was stopped, the loop device detached and the work directory removed; nothing was mounted outside a namespace of this run".to_string(),
        }),
        other => other,
    }
}

/// What to verify of a disk a node was installed on elsewhere (by installimage in a rescue
/// system, or in Cluster API Provider Hetzner's flow) with its NoCloud seed already in place.
#[derive(Debug, Clone)]
pub struct InstalledDiskRequest {
    /// The whole disk as a raw image file. It is booted writably: its first boot happens here,
    /// and this tool's unit and the node checks' output stay on it.
    pub disk: PathBuf,
    /// The number of the partition holding the node's root file system.
    pub root_partition: u32,
    /// What first boot must show (the seed's hostname and instance id among it).
    pub expectations: Expectations,
    /// The node checks the image promises, or why it promises none.
    pub promise: Result<NodePromise, String>,
    /// Where the work directory (the console, the mount point) is made and removed again.
    pub work_dir: PathBuf,
    /// Where to keep the serial console's log, if anywhere.
    pub console_log: Option<PathBuf>,
    /// How long first boot may take, from QEMU's start to the node checks' end.
    pub boot_timeout: Duration,
}

/// The verdict on an installed disk's first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// One row per check, in order: the boot, first boot, the node checks.
    pub findings: Vec<Finding>,
    /// How long the VM ran.
    pub boot_duration: Duration,
    /// Where the console log was kept, if it was.
    pub console_log: Option<PathBuf>,
}

/// Verifies the first boot of a node already installed on a disk: places the node checks' unit
/// on its root file system (in a mount namespace of its own), boots it under QEMU, and judges it
/// as `verify tarball` judges the disk it installs. Leaves the loop device, mounts and work
/// directory behind on no path, cancellation included.
pub async fn verify_installed_disk(
    context: &Context,
    request: &InstalledDiskRequest,
) -> Result<DiskReport, BootError> {
    let stage = Stage::default();
    until_cancelled(context, &stage, disk_work(context, request, &stage)).await
}

async fn disk_work(
    context: &Context,
    request: &InstalledDiskRequest,
    stage: &Stage,
) -> Result<DiskReport, BootError> {
    if let Some(missing) = missing_requirements() {
        return Err(BootError::Machine(missing));
    }
    let (node_checks, promise_problem) = match &request.promise {
        Ok(promise) => (checks::promised_checks(promise), None),
        Err(problem) => (Vec::new(), Some(problem.clone())),
    };
    let work_dir = work_dir_in(&request.work_dir)?;
    stage.set(
        context,
        Phase::Create,
        "placing the node checks on the disk",
        format!(
            "placing the node checks' unit on partition {} of {}",
            request.root_partition,
            request.disk.display()
        ),
    );
    let disk = LoopDevice::attach(&request.disk).await?;
    disk.add_partitions().await?;
    let root_partition = disk.info().partition(request.root_partition);
    let staged = work_dir.path().join("placed");
    let listing = work_dir.path().join("placed-files");
    install::stage(&staged, &listing, &node_check_files(&node_checks))?;
    let mount_point = work_dir.path().join("root");
    std::fs::create_dir_all(&mount_point).map_err(|error| BootError::Failed {
        what: "creating the mount point".to_string(),
        detail: error.to_string(),
    })?;
    crate::namespace::run_private(
        "placing the node checks on the disk",
        PLACE_FILES_SCRIPT,
        &[
            OsString::from(&root_partition),
            OsString::from(&mount_point),
            OsString::from(&staged),
            OsString::from(&listing),
        ],
        &mut |line: &str| say(context, line),
    )
    .await?;

    let judged = boot_and_judge(
        context,
        stage,
        FirstBoot {
            disk_path: &request.disk,
            root_partition,
            work_dir: work_dir.path(),
            expectations: request.expectations.clone(),
            node_checks: &node_checks,
            promise_problem,
            boot_timeout: request.boot_timeout,
            console_log: &request.console_log,
        },
    )
    .await?;
    clean_up(context, stage, disk, work_dir);
    Ok(DiskReport {
        findings: judged.findings,
        boot_duration: judged.boot_duration,
        console_log: judged.console_log,
    })
}

/// Mounts `$1` on `$2` and installs the files staged below `$3`, listed in `$4` (`mode path`
/// lines); the namespace's end unmounts it.
const PLACE_FILES_SCRIPT: &str = r#"
mount "$1" "$2"
while IFS=' ' read -r mode path; do
  [ -n "$path" ] || continue
  install -D -m "$mode" "$3$path" "$2$path"
done < "$4"
sync
"#;

async fn work(
    context: &Context,
    request: &TarballRequest,
    stage: &Stage,
) -> Result<TarballReport, BootError> {
    stage.set(
        context,
        Phase::Preflight,
        "looking inside the tarball",
        format!("looking inside {}", request.tarball.display()),
    );
    let contents = TarballContents::read(&request.tarball, &context.cancel).await?;
    let problems = contents.problems();
    if !problems.is_empty() {
        return Err(BootError::Input(
            problems
                .into_iter()
                .map(|problem| format!("{}: {problem}", request.tarball.display()))
                .collect(),
        ));
    }
    if let Some(missing) = missing_requirements() {
        return Err(BootError::Machine(missing));
    }
    let facts = TarballFacts {
        distribution: contents.distribution(),
        compression: contents.compression.to_string(),
        unpacked_bytes: contents.unpacked_bytes,
        kernels: contents.kernels.clone(),
    };
    say(
        context,
        format!(
            "{}, {}, {} entries, {:.2} GB unpacked, kernel {}",
            facts.distribution,
            facts.compression,
            contents.entries,
            facts.unpacked_bytes as f64 / 1e9,
            facts.kernels.join(", ")
        ),
    );
    let (release, modules, sysctls) = contents.promise_files();
    let (promise, promise_problem) = match NodePromise::from_image_files(release, modules, sysctls)
    {
        Ok(promise) => (Some(promise), None),
        Err(problem) => (None, Some(problem)),
    };
    let node_checks = promise
        .as_ref()
        .map(checks::promised_checks)
        .unwrap_or_default();

    // The work directory: removed when dropped, after the loop device (declared later, dropped
    // earlier) is detached.
    let work_dir = work_dir_in(&request.work_dir)?;
    let disk_path = work_dir.path().join("disk.img");
    let disk_size = install::disk_bytes(&contents);
    // The disk file is sparse, but what is installed on it takes real space: the tree, the
    // initramfs made again, first boot's writes. A full file system under a loop device turns
    // into I/O errors half-way through, so the room is checked first.
    let needed = install::space_needed(&contents);
    if let Ok(stats) = rustix::fs::statvfs(work_dir.path()) {
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        if free < needed {
            return Err(BootError::Machine(format!(
                "{} has {:.1} GB free; the disk of this tarball needs about {:.1} GB there: free some space or give --work-dir on a file system with more",
                request.work_dir.display(),
                free as f64 / 1e9,
                needed as f64 / 1e9
            )));
        }
    }
    std::fs::File::create(&disk_path)
        .and_then(|file| file.set_len(disk_size))
        .map_err(|error| BootError::Failed {
            what: format!("creating the disk file {}", disk_path.display()),
            detail: error.to_string(),
        })?;
    stage.set(
        context,
        Phase::Create,
        "installing the tarball on a local disk",
        format!(
            "installing on a {:.1} GB sparse disk, as installimage does",
            disk_size as f64 / 1e9
        ),
    );
    let disk = LoopDevice::attach(&disk_path).await?;

    let instance_id = format!(
        "caph-image-verify-{}",
        hex::encode(rand::random::<[u8; 6]>())
    );
    let user_data = match &request.user_data {
        Some(user_data) => user_data.text.clone(),
        None => firstboot::probe_user_data(""),
    };
    let network = Network {
        interface: qemu::GUEST_INTERFACE.to_string(),
        ipv4: qemu::GUEST_IPV4.to_string(),
        ipv4_prefix: qemu::GUEST_IPV4_PREFIX,
        ipv4_gateway: Some(qemu::GUEST_GATEWAY.to_string()),
        ipv6: None,
        ipv6_gateway: None,
    };
    let mut placed = vec![
        // CAPH's post-install script writes exactly these two files (host.go, ssh_client.go).
        PlacedFile {
            path: format!("{SEED_DIR}/meta-data"),
            content: format!(
                "instance-id: {instance_id}\nlocal-hostname: {}\n",
                request.hostname
            ),
            mode: 0o644,
        },
        PlacedFile {
            path: format!("{SEED_DIR}/user-data"),
            content: user_data,
            mode: 0o600,
        },
    ];
    placed.extend(node_check_files(&node_checks));
    let started = Instant::now();
    let installed = install::install(
        &InstallRequest {
            tarball: &request.tarball,
            contents: &contents,
            hostname: &request.hostname,
            network: &network,
            virtual_machine: true,
            files: &placed,
            work_dir: work_dir.path(),
        },
        &disk,
        &mut |line: &str| say(context, line),
    )
    .await?;
    say(
        context,
        format!(
            "installed in {:.0}s: / UUID={}, /boot UUID={}, {} host key(s) made",
            started.elapsed().as_secs_f64(),
            installed.root_uuid,
            installed.boot_uuid,
            installed.host_keys.len()
        ),
    );

    let judged = boot_and_judge(
        context,
        stage,
        FirstBoot {
            disk_path: &disk_path,
            root_partition: install::root_partition(&disk),
            work_dir: work_dir.path(),
            expectations: Expectations {
                hostname: request.hostname.clone(),
                instance_id,
                probe: request.user_data.is_none(),
                host_keys: HostKeys::NotAnyOf(contents.host_public_keys()),
                machine_id: MachineId::Not(contents.machine_id()),
            },
            node_checks: &node_checks,
            promise_problem,
            boot_timeout: request.boot_timeout,
            console_log: &request.console_log,
        },
    )
    .await?;

    clean_up(context, stage, disk, work_dir);
    Ok(TarballReport {
        tarball: facts,
        findings: judged.findings,
        boot_duration: judged.boot_duration,
        console_log: judged.console_log,
    })
}

/// A disk with a node installed on it, its NoCloud seed and [`node_check_files`] in place,
/// attached to a loop device, for its first boot.
struct FirstBoot<'a> {
    /// The disk's file, which QEMU boots (writably: first boot's writes are then read back).
    disk_path: &'a Path,
    /// The partition holding the node's root file system.
    root_partition: PathBuf,
    /// Where the console, the monitor and the mount point go.
    work_dir: &'a Path,
    expectations: Expectations,
    node_checks: &'a [NodeCheck],
    /// Why the image promises no node checks, if it does not.
    promise_problem: Option<String>,
    boot_timeout: Duration,
    /// Where to keep the console's log.
    console_log: &'a Option<PathBuf>,
}

/// What a first boot showed.
struct Judged {
    findings: Vec<Finding>,
    boot_duration: Duration,
    console_log: Option<PathBuf>,
}

/// Boots the disk under QEMU until this tool's unit says the node checks are done (or the
/// deadline), powers it off with Ctrl-Alt-Del, reads what first boot left on the disk, and judges
/// it: the console, first boot (`caph_core::firstboot`) and the node checks (`caph_core::checks`).
async fn boot_and_judge(
    context: &Context,
    stage: &Stage,
    boot: FirstBoot<'_>,
) -> Result<Judged, BootError> {
    stage.set(
        context,
        Phase::Provision,
        "first boot",
        format!(
            "booting under QEMU (x86, BIOS, through the disk's GRUB); first boot may take up to {}",
            human_duration(boot.boot_timeout)
        ),
    );
    let mut vm = Vm::start(VmConfig::new(boot.disk_path, boot.work_dir)).await?;
    // Progress while first boot runs: each milestone the console shows, once, and now and then
    // how long it has been waiting (as the provision phase, which is shown line by line).
    let mut reported: Vec<&'static str> = Vec::new();
    let mut last_report = Instant::now();
    let timeout = boot.boot_timeout;
    let progress = |detail: String| {
        context.progress.event(ProgressEvent::Phase {
            scope: "tarball".to_string(),
            phase: Phase::Provision,
            detail,
        });
    };
    let waited = vm
        .wait_for(
            &[DONE_LINE],
            timeout,
            &context.cancel,
            &mut |lines: &[String], uptime: Duration| {
                for milestone in crate::console::milestones(lines) {
                    if !reported.contains(&milestone) {
                        reported.push(milestone);
                        progress(format!("{:.0}s: {milestone}", uptime.as_secs_f64()));
                        last_report = Instant::now();
                    }
                }
                if last_report.elapsed() >= WAIT_REPORT_EVERY {
                    last_report = Instant::now();
                    progress(format!(
                        "{:.0}s: waiting for first boot to finish (up to {}); last: {}",
                        uptime.as_secs_f64(),
                        human_duration(timeout),
                        reported
                            .last()
                            .copied()
                            .unwrap_or("nothing on the console yet")
                    ));
                }
            },
        )
        .await?;
    let boot_duration = vm.uptime();
    stage.set(
        context,
        Phase::Shutdown,
        "power off",
        "Ctrl-Alt-Del, waiting for a clean shutdown".to_string(),
    );
    // A boot past its deadline is asked too: a node stuck in cloud-init still shuts down, and
    // its disk is then read as it left it.
    let clean = match waited {
        Waited::Found | Waited::Deadline => vm.power_off(POWER_OFF_DEADLINE).await,
        Waited::Ended => false,
    };
    let console = vm.lines();
    let qemu_messages = vm.qemu_messages();
    drop(vm);
    let kept_console = keep_console(boot.console_log, &boot.work_dir.join("console.log"));

    let mut findings = crate::console::findings(&console, &boot.expectations.hostname);
    findings.push(match waited {
        Waited::Found => Finding {
            name: "first-boot".to_string(),
            status: FindingStatus::Ok,
            detail: format!(
                "cloud-init's final stage and the node checks were over after {:.0}s",
                boot_duration.as_secs_f64()
            ),
        },
        Waited::Deadline => Finding {
            name: "first-boot".to_string(),
            status: FindingStatus::Failed,
            detail: format!(
                "not over within {} (--boot-timeout); the last milestone: {}",
                human_duration(timeout),
                reported.last().copied().unwrap_or("nothing on the console")
            ),
        },
        Waited::Ended => Finding {
            name: "first-boot".to_string(),
            status: FindingStatus::Failed,
            detail: format!(
                "the VM stopped after {:.0}s before first boot was over; the console ends with: {}{}",
                boot_duration.as_secs_f64(),
                console
                    .iter()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .map(|line| caph_core::text::Escaped(line.trim()).to_string())
                    .unwrap_or_default(),
                if qemu_messages.trim().is_empty() {
                    String::new()
                } else {
                    format!("; QEMU said: {}", caph_core::text::Escaped(qemu_messages.trim()))
                }
            ),
        },
    });
    findings.push(Finding {
        name: "power-off".to_string(),
        status: if clean {
            FindingStatus::Ok
        } else {
            FindingStatus::Failed
        },
        detail: if clean {
            "shut down cleanly on Ctrl-Alt-Del".to_string()
        } else {
            "no clean shutdown: the disk is read as a power cut left it".to_string()
        },
    });

    stage.set(
        context,
        Phase::Verify,
        "reading the disk",
        "reading what first boot left on the disk".to_string(),
    );
    let mount_point = boot.work_dir.join("root");
    std::fs::create_dir_all(&mount_point).map_err(|error| BootError::Failed {
        what: "creating the mount point".to_string(),
        detail: error.to_string(),
    })?;
    let script = format!(
        "mount -o ro,noload \"$1\" \"$2\"\n{}",
        firstboot::evidence_script(&mount_point.to_string_lossy(), &[FACTS_OUTPUT_PATH])
    );
    let output = crate::namespace::output_private(
        "reading the disk after first boot",
        &script,
        &[
            OsString::from(&boot.root_partition),
            OsString::from(&mount_point),
        ],
    )
    .await?;
    let evidence = Evidence::parse(&output);
    findings.extend(firstboot::judge_first_boot(&evidence, &boot.expectations));
    match (&boot.promise_problem, evidence.get(FACTS_OUTPUT_PATH)) {
        (Some(problem), _) => findings.push(Finding {
            name: "node-checks".to_string(),
            status: FindingStatus::NotChecked,
            detail: problem.clone(),
        }),
        (None, None) => findings.push(Finding {
            name: "node-checks".to_string(),
            status: FindingStatus::Failed,
            detail: format!("{FACTS_OUTPUT_PATH} is missing: the node never ran them"),
        }),
        (None, Some(output)) => {
            let (results, booted) = checks::judge_facts(boot.node_checks, output);
            if !booted {
                findings.push(Finding {
                    name: "node-checks".to_string(),
                    status: FindingStatus::Failed,
                    detail: "systemd was not running as the init system when they ran".to_string(),
                });
            }
            findings.extend(results.iter().map(Finding::from));
        }
    }

    Ok(Judged {
        findings,
        boot_duration,
        console_log: kept_console,
    })
}

/// The files this tool places on a node's disk before its first boot: the node checks' script,
/// and a unit (pulled in by cloud-init's final stage) that runs it once that stage is over,
/// keeps its output on the disk and says so on the console. That line is how the boot's end is
/// seen without a network or a login.
fn node_check_files(node_checks: &[NodeCheck]) -> Vec<PlacedFile> {
    vec![
        PlacedFile {
            path: FACTS_SCRIPT_PATH.to_string(),
            content: checks::facts_script(node_checks),
            mode: 0o700,
        },
        PlacedFile {
            path: UNIT_PATH.to_string(),
            content: format!(
                "# Placed by caph-image verify on its own disk only: the node checks, once cloud-init's final stage is over.\n[Unit]\nDescription=caph-image verify: the node checks\nAfter=cloud-final.service\n\n[Service]\nType=oneshot\nStandardOutput=journal+console\nExecStart=/bin/sh -c 'mkdir -p {VERIFY_DIR}; /bin/bash {FACTS_SCRIPT_PATH} > {FACTS_OUTPUT_PATH} 2>&1; sync; echo \"{DONE_LINE}\"'\n"
            ),
            mode: 0o644,
        },
        PlacedFile {
            path: UNIT_DROP_IN_PATH.to_string(),
            content: "# Placed by caph-image verify: its node checks run after cloud-init's final stage.\n[Unit]\nWants=caph-image-verify.service\n".to_string(),
            mode: 0o644,
        },
    ]
}

/// Detaches the disk's loop device (saying so when it is still busy: it then detaches itself
/// once free) and removes the work directory, in that order.
fn clean_up(context: &Context, stage: &Stage, disk: LoopDevice, work_dir: tempfile::TempDir) {
    stage.set(
        context,
        Phase::Cleanup,
        "cleanup",
        format!(
            "detaching {} and removing the work directory",
            disk.info().device.display()
        ),
    );
    let device = disk.info().device.clone();
    if !disk.detach() {
        say(
            context,
            format!(
                "{} was still busy; it detaches itself once free",
                device.display()
            ),
        );
    }
    drop(work_dir);
    stage.set(context, Phase::Done, "done", String::new());
}

/// A work directory of this run below `parent` (made if missing), removed when dropped.
fn work_dir_in(parent: &Path) -> Result<tempfile::TempDir, BootError> {
    std::fs::create_dir_all(parent).map_err(|error| BootError::Failed {
        what: format!("creating {}", parent.display()),
        detail: error.to_string(),
    })?;
    tempfile::Builder::new()
        .prefix("caph-image-verify-")
        .tempdir_in(parent)
        .map_err(|error| BootError::Failed {
            what: format!("creating a work directory in {}", parent.display()),
            detail: error.to_string(),
        })
}

/// Copies the console log where the caller wants it; where it went, if anywhere.
fn keep_console(wanted: &Option<PathBuf>, log: &Path) -> Option<PathBuf> {
    let target = wanted.as_ref()?;
    std::fs::copy(log, target).ok().map(|_| target.clone())
}

/// `15m`, `2m30s`, `45s`.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 60, seconds % 60) {
        (0, seconds) => format!("{seconds}s"),
        (minutes, 0) => format!("{minutes}m"),
        (minutes, seconds) => format!("{minutes}m{seconds}s"),
    }
}
