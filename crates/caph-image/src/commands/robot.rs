//! `caph-image build robot` (build or take a tarball, install it through the rescue system and
//! installimage, check the node; with `--sim` on a simulated server in this process) and
//! `caph-image robot servers`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use caph_core::Arch;
use caph_core::backend::Context;
use caph_core::text::escape;
use caph_hcloud::backend::naming;
use caph_robot::backend::{InstallTarget, RobotBackend, RobotBackendConfig, layout_from_autosetup};
use caph_robot::client::{Credentials, RobotClient};
use caph_rootfs::assemble::{self, AssembleOptions};
use caph_rootfs::input::LAYOUT_LIMIT;
use caph_sim::machine::SshMachines;
use caph_sim::real_installimage::InstallimageArchive;
use caph_sim::robot::{
    RESCUE_PACKAGES, RESCUE_TEMPLATE_CACHE, RobotServer, RobotSim, RobotSimConfig, SshRobotConfig,
    SshRobotMachines, TimeMode,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{EXIT_CANCELLED, cancel_on_signals, runtime, sim};
use crate::cli::{EXIT_FAILURE, EXIT_USAGE, GlobalArgs, OutputFormat, RobotArgs};
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
    /// Default: the backend's (Cluster API Provider Hetzner's pace), divided by the speed with
    /// `--sim`.
    pub poll_interval: Option<Duration>,
    pub reset_timeout: Duration,
    /// `--sim` with its `--sim-speed`: install on a simulated server in this process.
    pub sim: Option<f64>,
    /// `--sim-installimage`: the real installimage for the simulated rescue system.
    pub sim_installimage: Option<&'a Path>,
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
            "HETZNER_ROBOT_USER and HETZNER_ROBOT_PASSWORD must be set: create a web service user in Robot (Settings, Web service and app settings), or try the whole installation without an account on a simulated server on this machine with --sim (`sudo caph-image build robot SPEC --server 1 --sim`)"
        );
    };
    RobotClient::new(&api.endpoint, Credentials::new(user, password))
        .context("setting up the Robot client")
}

/// A shipped layout by name, or an autosetup file by path.
fn layout(name_or_path: &str) -> anyhow::Result<caph_core::spec::DiskLayout> {
    let text = match SHIPPED_LAYOUTS
        .iter()
        .find(|(name, _)| *name == name_or_path)
    {
        Some((_, text)) => (*text).to_string(),
        None => {
            let bytes =
                caph_rootfs::input::read_regular(Path::new(name_or_path), LAYOUT_LIMIT)
                    .map_err(|error| {
                        let names: Vec<&str> =
                            SHIPPED_LAYOUTS.iter().map(|(name, _)| *name).collect();
                        anyhow::anyhow!(
                            "--layout {name_or_path}: neither a shipped layout ({}) nor a readable autosetup file: {}",
                            names.join(", "),
                            error.rule()
                        )
                    })?;
            String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("--layout {name_or_path}: not UTF-8 text"))?
        }
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
    // A regular file, or a refusal (a FIFO would hang the checksum): with --sim before the
    // simulator starts, without it once the credentials are known to be there.
    let check_tarball = || -> anyhow::Result<()> {
        if let Some(tarball) = options.tarball {
            caph_rootfs::input::open_regular(tarball)
                .map_err(|error| anyhow::anyhow!("--tarball {error}"))?;
        }
        Ok(())
    };
    if options.sim.is_some() {
        check_tarball()?;
    }
    if options.sim.is_some() && options.api.endpoint != caph_robot::client::DEFAULT_ENDPOINT {
        output::error(&format!(
            "--sim installs through its own simulated Robot, not {}: leave out --robot-endpoint and unset HETZNER_ROBOT_ENDPOINT",
            options.api.endpoint
        ));
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let real_installimage = options
        .sim_installimage
        .map(|path| {
            InstallimageArchive::open(path).with_context(|| {
                format!(
                    "--sim-installimage {}: an archive of Hetzner's installimage is needed",
                    path.display()
                )
            })
        })
        .transpose()?;
    let progress = Arc::new(Progress::new(global.no_progress, global.verbose));
    let runtime = runtime()?;
    // Declared after the runtime, so dropped before it: the simulator stops and its machines
    // are removed on every way out of this function.
    let simulated = match options.sim {
        Some(speed) => Some(runtime.block_on(SimRobot::start(
            speed,
            options.server,
            options.arch,
            real_installimage,
            &progress,
        ))?),
        None => None,
    };
    let client = match &simulated {
        Some(simulated) => simulated.client()?,
        None => client(options.api)?,
    };
    if options.sim.is_none() {
        check_tarball()?;
    }
    let poll_interval = options.poll_interval.unwrap_or_else(|| {
        let real_pace = RobotBackendConfig::default().poll_interval;
        // The simulated server boots `speed` times faster; looking at the same real-time pace
        // would add most of a reset's simulated duration as latency.
        simulated.as_ref().map_or(real_pace, |simulated| {
            real_pace
                .div_f64(simulated.speed)
                .max(MIN_SIM_POLL_INTERVAL)
        })
    });
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

    // The layout installimage gets, for the machine template that repeats the installation.
    let template_layout = layout
        .clone()
        .or_else(|| spec.robot.as_ref().map(|robot| robot.disk.clone()));
    let mut target = InstallTarget::new(options.server, &tarball);
    target.layout = layout;
    target.hostname = options.hostname.map(str::to_string);
    target.extra_keys = options.authorize_keys.to_vec();
    let config = RobotBackendConfig {
        poll_interval,
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
        if simulated.is_some() {
            "the simulator's machines are removed by the next --sim run".to_string()
        } else {
            format!(
                "remove the rescue activation of server {} in Robot if it is still active",
                options.server
            )
        },
    );
    output::note(&format!(
        "build {build_id}: installing {} on {}server {}",
        tarball.display(),
        if simulated.is_some() {
            "simulated "
        } else {
            ""
        },
        options.server
    ));
    let result = runtime.block_on(backend.install(&context, &spec, &target));
    progress.finish();
    if let (Err(_), Some(simulated)) = (&result, &simulated) {
        // A machine that failed to boot looks like a server that never answers; the
        // simulator knows why.
        for error in simulated.machine_errors() {
            output::note(&format!("simulator: server {}: {error}", options.server));
        }
    }
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
                template_layout.as_ref(),
                !spec.system.disable_swap,
            );
            let summary = simulated.as_ref().map(SimRobot::summary);
            if let (Some(summary), OutputFormat::Json) = (&summary, global.output) {
                // Also on stderr, where a person watching a scripted run reads.
                output::note(&summary.sentence());
            }
            match global.output {
                OutputFormat::Json => output::json(&json!({
                    "simulated": summary.is_some(),
                    "simulator": summary.as_ref().map(SimSummary::json),
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
                    if let Some(summary) = &summary {
                        output::result("");
                        output::result(&summary.sentence());
                    }
                }
            }
            if simulated.is_some() {
                output::note("simulator: stopping, and removing its machines and disks");
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

/// The shortest pause between looks at a simulated server: far below the simulated resets at
/// any useful speed, and a few dials a second at most.
const MIN_SIM_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The Robot web service user of the simulated account (the password is random per run).
const SIM_USER: &str = "caph-image-sim";

/// `--sim`: a Robot simulator in this process with one dedicated server, whose rescue system
/// and installed system are real OpenSSH servers in chroots on this machine and whose
/// installimage is this binary (`caph-image installimage`, see `main`).
struct SimRobot {
    /// Dropped before the machines (field order): the API stops before its machines go.
    sim: RobotSim,
    robot_machines: Arc<SshRobotMachines>,
    /// Dropping the last reference kills every machine and removes its directory.
    _machines: Arc<SshMachines>,
    password: String,
    speed: f64,
    server: u64,
}

/// What the simulator holds after a successful installation.
#[derive(Debug)]
struct SimSummary {
    speed: f64,
    server: u64,
    rescue_active: bool,
    resets: Vec<String>,
    rescue_boots: u32,
    /// What the rescue system said about the installimage it ran.
    installimage: Option<String>,
}

impl SimSummary {
    fn sentence(&self) -> String {
        format!(
            "Simulated run (--sim, {}x real time): server {} exists only in the simulator, which stopped with this command; nothing was touched in a Robot account. The server took {} reset(s) ({}), booted the rescue system {} time(s), and its rescue activation is {}.",
            self.speed,
            self.server,
            self.resets.len(),
            self.resets.join(", "),
            self.rescue_boots,
            if self.rescue_active {
                "still pending"
            } else {
                "used up"
            }
        ) + &match &self.installimage {
            Some(line) => format!(" installimage: {}.", line.trim_start_matches("caph-sim: ")),
            None => String::new(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "speed": self.speed,
            "note": self.sentence(),
            "server_number": self.server,
            "resets": self.resets,
            "rescue_boots": self.rescue_boots,
            "rescue_active": self.rescue_active,
            "installimage": self.installimage,
        })
    }
}

impl SimRobot {
    /// Starts the machines with the rescue system of `arch` ready (built with apt on first
    /// use, with progress), then the Robot API with server `server` in the account.
    async fn start(
        speed: f64,
        server: u64,
        arch: Arch,
        real_installimage: Option<InstallimageArchive>,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<SimRobot> {
        if std::env::var_os("HETZNER_ROBOT_USER").is_some()
            || std::env::var_os("HETZNER_ROBOT_PASSWORD").is_some()
        {
            output::note(
                "--sim: HETZNER_ROBOT_USER and HETZNER_ROBOT_PASSWORD are not used; nothing is sent to the Robot web service",
            );
        }
        let machines = sim::Machines::start(
            progress,
            "caph-image build robot SPEC --server N --sim",
            // The rescue system is set up in a machine's disk right after its create: the
            // copy must be done by then.
            false,
        )?;
        let cannot = |error: anyhow::Error| {
            anyhow::anyhow!("--sim cannot run {arch} servers on this machine: {error:#}")
        };
        // The rescue system is the Debian 12 system image plus the rescue packages.
        machines.prepare("debian-12", arch).await.map_err(cannot)?;
        // This binary is the rescue system's installimage.
        let installimage_binary = std::env::current_exe().context(
            "--sim: finding this binary, which the simulated rescue system runs as installimage",
        )?;
        if let Some(archive) = &real_installimage {
            output::note(&format!(
                "simulator: the rescue system runs {} for layouts this machine's kernel can install (one drive, BIOS, no RAID, LVM or encryption), the simulated installimage for the rest",
                archive.label
            ));
        }
        let robot_machines = Arc::new(SshRobotMachines::new(SshRobotConfig {
            machines: machines.machines.clone(),
            real_installimage,
            installimage_binary,
            rescue_packages: RESCUE_PACKAGES
                .iter()
                .map(|name| (*name).to_string())
                .collect(),
            log: Some(machines.log()),
        }));
        output::note(&format!(
            "simulator: preparing the rescue system for {arch} (apt installs its tools on first use; cached in {RESCUE_TEMPLATE_CACHE})"
        ));
        let started = std::time::Instant::now();
        robot_machines
            .prepare_rescue(robot_arch(arch))
            .await
            .map_err(|error| cannot(anyhow::Error::new(error)))?;
        output::note(&format!(
            "simulator: rescue system ready after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        machines.prepared();

        let password = format!("sim-{:032x}", rand::random::<u128>());
        let mut dedicated = RobotServer::new(server, &format!("sim-server-{server}"));
        dedicated.arch = robot_arch(arch).to_string();
        let sim = RobotSim::start(RobotSimConfig {
            user: SIM_USER.to_string(),
            password: password.clone(),
            time: TimeMode::Scaled(1.0 / speed),
            servers: vec![dedicated],
            machines: robot_machines.clone(),
            ..Default::default()
        })
        .await
        .context("--sim: starting the Robot simulator on 127.0.0.1")?;
        output::note(&format!(
            "simulated run: a Robot simulator at {} ({speed}x real time) with server {server} (EX44, two 512 GB drives); its rescue system and installed node are OpenSSH servers in chroots on this machine; nothing is touched in a Robot account",
            sim.url()
        ));
        Ok(SimRobot {
            sim,
            robot_machines,
            _machines: machines.machines,
            password,
            speed,
            server,
        })
    }

    fn client(&self) -> anyhow::Result<RobotClient> {
        RobotClient::new(
            &self.sim.url(),
            Credentials::new(SIM_USER, self.password.clone()),
        )
        .context("setting up the client of the simulated Robot")
    }

    /// What the machine host reported failing (a boot that could not happen), in order.
    fn machine_errors(&self) -> Vec<String> {
        self.sim
            .state()
            .servers
            .into_iter()
            .filter(|server| server.number == self.server)
            .flat_map(|server| server.machine_errors)
            .collect()
    }

    fn summary(&self) -> SimSummary {
        let state = self.sim.state();
        let server = state
            .servers
            .iter()
            .find(|server| server.number == self.server);
        SimSummary {
            speed: self.speed,
            server: self.server,
            rescue_active: server.is_some_and(|server| server.rescue_active),
            resets: server
                .map(|server| server.resets.clone())
                .unwrap_or_default(),
            rescue_boots: server.map_or(0, |server| server.rescue_boots),
            installimage: self.robot_machines.installimage_ran(self.server),
        }
    }
}

/// Robot's name of an architecture.
fn robot_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86 => "x86_64",
        Arch::Arm => "aarch64",
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
                // Fields come from the API: escaped whole, so a row stays one row.
                output::result(&format!(
                    "{:<8} {:<24} {:<16} {:<14} {:<12} {}",
                    server.server_number,
                    escape(&server.server_name),
                    escape(server.server_ip.as_deref().unwrap_or("-")),
                    escape(&server.product),
                    escape(&server.dc),
                    escape(&server.status)
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
