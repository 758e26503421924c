//! `caph-sim`: runs the simulators as a standalone process for demos and end-to-end tests.
//!
//! `caph-sim [--hcloud-listen ADDR] [--robot-listen ADDR] [--token T] [--time-scale F] ...`
//! prints one line per endpoint (`hcloud: http://ADDR/v1`, `robot: http://ADDR`), plus
//! `token: T` and `robot-password: P` for secrets it generated, then serves until SIGINT or
//! SIGTERM. `caph-sim installimage ARGS...` is the simulated installimage that simulated rescue
//! systems run. Exit codes: 0 after a signal, 1 when it cannot start, 2 for bad arguments;
//! `installimage` exits with installimage's code.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, RequestRecord, TimeMode};
use caph_sim::machine::{MachineLog, SshMachines, SshMachinesConfig};
use caph_sim::real_installimage::InstallimageArchive;
use caph_sim::robot::{
    RESCUE_PACKAGES, RobotAddressOnly, RobotArgs, RobotMachines, SshRobotConfig, SshRobotMachines,
    serve_from_args,
};
use clap::Parser;
use rand::Rng as _;
use rand::distr::Alphanumeric;

/// One line on stderr, its control characters escaped (paths and messages come from clients
/// and machines); a closed stderr is ignored rather than a panic.
macro_rules! say {
    ($($format:tt)*) => {{
        let line = format!($($format)*);
        let _ = writeln!(std::io::stderr(), "{}", caph_core::text::Escaped(&line));
    }};
}

/// Simulators of the Hetzner Cloud API and the Hetzner Robot API on local sockets.
#[derive(Debug, Parser)]
#[command(name = "caph-sim", version)]
struct Args {
    /// Address for the Hetzner Cloud API, e.g. 127.0.0.1:8080 (port 0 picks a free one); the
    /// API is served below /v1.
    #[arg(long, value_name = "ADDR")]
    hcloud_listen: Option<SocketAddr>,
    /// The only Hetzner Cloud API token accepted; a random one is generated and printed when
    /// absent.
    #[arg(long, value_name = "T", env = "CAPH_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Multiplies every simulated duration: 1.0 is realistic (a cloud server starts in about
    /// 28 s), 0.01 is 100 times faster.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    time_scale: f64,
    /// Back every server with a real sshd on its address, running in the server's own Debian
    /// root filesystem (needs root, openssh-server, mmdebstrap and util-linux). Without it,
    /// servers only get an address and nothing answers there.
    #[arg(long)]
    ssh_machines: bool,
    /// With --ssh-machines: an archive of Hetzner's installimage (hetzneronline/installimage, or
    /// the fork Cluster API Provider Hetzner uses), which dedicated servers' rescue systems then
    /// run for real wherever this machine's kernel can install the layout (one drive, no
    /// software RAID, LVM, encryption or UEFI); the simulated installimage runs the rest.
    #[arg(long, value_name = "FILE", requires = "ssh_machines")]
    robot_installimage: Option<std::path::PathBuf>,
    /// Print every Hetzner Cloud API request with its answer's status on stderr.
    #[arg(long)]
    log_requests: bool,
    #[command(flatten)]
    robot: RobotArgs,
}

fn generated_token() -> String {
    // 64 characters, like a real Hetzner Cloud API token.
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

/// SIGINT and SIGTERM, listened for from the moment this is made: a signal that arrives before
/// the endpoints are even printed is not missed (nor does it kill the process unhandled).
struct Shutdown {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    fn listen() -> Shutdown {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Shutdown {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Shutdown {}
        }
    }

    async fn requested(mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => {}
                _ = next(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn stderr_log() -> MachineLog {
    Arc::new(|line: &str| say!("caph-sim: {line}"))
}

/// Machines for both simulators: separate [`SshMachines`] instances, so that Robot machine ids
/// (server number × 10⁶) never meet Hetzner Cloud server ids.
fn ssh_machines() -> Result<(Arc<SshMachines>, Arc<SshMachines>), String> {
    let make = || {
        SshMachines::new(SshMachinesConfig {
            log: Some(stderr_log()),
            ..SshMachinesConfig::default()
        })
        .map(Arc::new)
        .map_err(|error| error.to_string())
    };
    Ok((make()?, make()?))
}

async fn serve(args: Args) -> ExitCode {
    let shutdown = Shutdown::listen();
    if args.hcloud_listen.is_none() && args.robot.robot_listen.is_none() {
        say!("caph-sim: nothing to serve: give --hcloud-listen and/or --robot-listen");
        return ExitCode::from(2);
    }
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        say!("caph-sim: --time-scale must be a positive number");
        return ExitCode::FAILURE;
    }
    let time = TimeMode::Scaled(args.time_scale);
    let machines = if args.ssh_machines {
        match ssh_machines() {
            Ok(machines) => Some(machines),
            Err(error) => {
                say!("caph-sim: --ssh-machines: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let mut lines = Vec::new();

    let mut hcloud = None;
    if let Some(listen) = args.hcloud_listen {
        let (token, generated) = match &args.token {
            Some(token) if !token.is_empty() => (token.clone(), false),
            _ => (generated_token(), true),
        };
        let mut config = HcloudSimConfig {
            token: token.clone(),
            listen,
            time,
            ..Default::default()
        };
        if let Some((cloud_machines, _)) = &machines {
            config.machines = cloud_machines.clone();
        }
        if args.log_requests {
            config.on_request = Some(Arc::new(|record: &RequestRecord| {
                let status = record
                    .status
                    .map_or_else(|| "dropped".to_owned(), |status| status.to_string());
                say!("caph-sim: {} {} {status}", record.method, record.path);
            }));
        }
        match HcloudSim::start(config).await {
            Ok(sim) => {
                lines.push(format!("hcloud: {}", sim.api_url()));
                if generated {
                    // Printed only when generated: the caller knows a token it chose itself.
                    lines.push(format!("token: {token}"));
                }
                hcloud = Some(sim);
            }
            Err(error) => {
                say!("caph-sim: cannot listen on {listen} for the hcloud API: {error}");
                return ExitCode::FAILURE;
            }
        }
    }

    let robot_machines: Arc<dyn RobotMachines> = match &machines {
        Some((_, robot_machines)) => {
            let installimage_binary = match std::env::current_exe() {
                Ok(path) => path,
                Err(error) => {
                    say!("caph-sim: cannot find its own binary for installimage: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let real_installimage = match &args.robot_installimage {
                Some(path) => match InstallimageArchive::open(path) {
                    Ok(archive) => Some(archive),
                    Err(error) => {
                        eprintln!("caph-sim: --robot-installimage: {error}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            Arc::new(SshRobotMachines::new(SshRobotConfig {
                machines: robot_machines.clone(),
                installimage_binary,
                real_installimage,
                rescue_packages: RESCUE_PACKAGES
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect(),
                log: Some(stderr_log()),
            }))
        }
        None => Arc::new(RobotAddressOnly::default()),
    };
    let robot = match serve_from_args(&args.robot, time, robot_machines).await {
        Ok(robot) => robot,
        Err(error) => {
            say!("caph-sim: robot: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(served) = &robot {
        lines.push(format!("robot: {}", served.sim.url()));
        if let Some(password) = &served.generated_password {
            lines.push(format!("robot-password: {password}"));
        }
    }

    let mut stdout = std::io::stdout().lock();
    for line in &lines {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    drop(stdout);
    shutdown.requested().await;
    drop(robot);
    drop(hcloud);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().collect();
    // The simulated installimage runs inside simulated rescue systems: no runtime, no clap, the
    // arguments exactly as installimage takes them.
    if arguments.get(1).map(String::as_str) == Some("installimage") {
        let code = caph_sim::installimage::main_from_args(&arguments[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say!("caph-sim: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}
