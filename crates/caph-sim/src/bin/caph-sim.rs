//! `caph-sim`: runs the simulators as a standalone process for demos and end-to-end tests.
//!
//! Prints one line per endpoint (`hcloud: http://ADDR/v1`), and `token: T` when it generated the
//! token, then serves until SIGINT or SIGTERM. Exit codes: 0 after a signal, 1 when it cannot start.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use std::sync::Arc;

use caph_sim::hcloud::{HcloudSim, HcloudSimConfig, RequestRecord, TimeMode};
use caph_sim::machine::{SshMachines, SshMachinesConfig};
use clap::Parser;
use rand::Rng as _;
use rand::distr::Alphanumeric;

/// Simulators of the Hetzner Cloud API (and, later, the Robot API) on local sockets.
#[derive(Debug, Parser)]
#[command(name = "caph-sim", version)]
struct Args {
    /// Address for the Hetzner Cloud API, e.g. 127.0.0.1:8080 (port 0 picks a free one); the
    /// API is served below /v1.
    #[arg(long, value_name = "ADDR")]
    hcloud_listen: SocketAddr,
    /// The only API token accepted; a random one is generated and printed when absent.
    #[arg(long, value_name = "T", env = "CAPH_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Multiplies every simulated duration: 1.0 is realistic (a server starts in about 28 s),
    /// 0.01 is 100 times faster.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    time_scale: f64,
    /// Back every server with a real sshd on its address, running in the server's own Debian
    /// root filesystem (needs root, openssh-server, mmdebstrap and util-linux). Without it,
    /// servers only get an address and nothing answers there.
    #[arg(long)]
    ssh_machines: bool,
    /// Print every API request with its answer's status on stderr.
    #[arg(long)]
    log_requests: bool,
}

fn generated_token() -> String {
    // 64 characters, like a real Hetzner Cloud API token.
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

async fn terminated() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(stream) => stream,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        eprintln!("caph-sim: --time-scale must be a positive number");
        return ExitCode::FAILURE;
    }
    let (token, generated) = match args.token {
        Some(token) if !token.is_empty() => (token, false),
        _ => (generated_token(), true),
    };
    let mut config = HcloudSimConfig {
        token: token.clone(),
        listen: args.hcloud_listen,
        time: TimeMode::Scaled(args.time_scale),
        ..Default::default()
    };
    if args.log_requests {
        config.on_request = Some(Arc::new(|record: &RequestRecord| {
            let status = record
                .status
                .map_or_else(|| "dropped".to_owned(), |status| status.to_string());
            eprintln!("caph-sim: {} {} {status}", record.method, record.path);
        }));
    }
    if args.ssh_machines {
        let machines = SshMachines::new(SshMachinesConfig {
            log: Some(Arc::new(|line: &str| eprintln!("caph-sim: {line}"))),
            ..SshMachinesConfig::default()
        });
        match machines {
            Ok(machines) => config.machines = Arc::new(machines),
            Err(error) => {
                eprintln!("caph-sim: --ssh-machines: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let sim = match HcloudSim::start(config).await {
        Ok(sim) => sim,
        Err(error) => {
            eprintln!(
                "caph-sim: cannot listen on {} for the hcloud API: {error}",
                args.hcloud_listen
            );
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "hcloud: {}", sim.api_url());
    if generated {
        // Printed only when generated: the caller knows a token it chose itself.
        let _ = writeln!(stdout, "token: {token}");
    }
    let _ = stdout.flush();
    drop(stdout);
    terminated().await;
    drop(sim);
    ExitCode::SUCCESS
}
