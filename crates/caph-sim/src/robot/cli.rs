//! The Robot simulator's command-line flags, for the `caph-sim` binary to flatten into its own.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng as _;
use rand::distr::Alphanumeric;

use super::{RobotMachines, RobotServer, RobotSim, RobotSimConfig, RobotSimError, TimeMode};

/// `--robot-listen ADDR --robot-user U --robot-password P [--robot-server N:NAME]...`
#[derive(Debug, Clone, clap::Args)]
pub struct RobotArgs {
    /// Address for the Hetzner Robot API, e.g. 127.0.0.1:8081 (port 0 picks a free one); the API
    /// is served at the root, like https://robot-ws.your-server.de. Without it, no Robot API.
    #[arg(long, value_name = "ADDR")]
    pub robot_listen: Option<SocketAddr>,
    /// The web service user accepted by Basic auth.
    #[arg(long, value_name = "U", default_value = "robot")]
    pub robot_user: String,
    /// The web service password; a random one is generated and printed when absent.
    #[arg(
        long,
        value_name = "P",
        env = "CAPH_SIM_ROBOT_PASSWORD",
        hide_env_values = true
    )]
    pub robot_password: Option<String>,
    /// A dedicated server of the account as NUMBER:NAME (repeatable); default 321:server-1.
    #[arg(long = "robot-server", value_name = "N:NAME")]
    pub robot_servers: Vec<String>,
    /// Size of each server's two drives (/dev/sda, /dev/sdb), e.g. 3G (binary units M, G, T).
    /// Installs write sparse disk images of this size: keep it small for tests.
    #[arg(long, value_name = "SIZE", default_value = "512G")]
    pub robot_drive_size: String,
    /// A server behaviour for fault tests, as KIND:NUMBER (repeatable): ignore-sw-reset (a hung
    /// OS; `sw` resets do nothing) or rescue-never-boots (resets into rescue never come up).
    #[arg(long = "robot-fault", value_name = "KIND:N")]
    pub robot_faults: Vec<String>,
}

/// `3G` -> bytes (binary units); `None` for anything else.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match unit {
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A started Robot simulator and, when it was generated, the password to print.
#[derive(Debug)]
pub struct ServedRobot {
    pub sim: RobotSim,
    /// `Some` only when the password was generated (the caller knows one it chose).
    pub generated_password: Option<String>,
}

/// Why the flags could not start a simulator.
#[derive(Debug, thiserror::Error)]
pub enum RobotSimCliError {
    #[error("--robot-server {0:?}: expected NUMBER:NAME, e.g. 321:server-1")]
    BadServer(String),
    #[error("--robot-drive-size {0:?}: expected a size like 3G, 512M or 2T")]
    BadDriveSize(String),
    #[error(
        "--robot-fault {0:?}: expected ignore-sw-reset:NUMBER or rescue-never-boots:NUMBER of a configured server"
    )]
    BadFault(String),
    #[error(transparent)]
    Start(#[from] RobotSimError),
}

/// Starts the Robot simulator the flags describe (`Ok(None)` without `--robot-listen`), with
/// `machines` behind its servers. Print `sim.url()` and, if generated, the password.
pub async fn serve_from_args(
    args: &RobotArgs,
    time: TimeMode,
    machines: Arc<dyn RobotMachines>,
) -> Result<Option<ServedRobot>, RobotSimCliError> {
    let Some(listen) = args.robot_listen else {
        return Ok(None);
    };
    let mut servers = Vec::new();
    for spec in &args.robot_servers {
        let Some((number, name)) = spec.split_once(':') else {
            return Err(RobotSimCliError::BadServer(spec.clone()));
        };
        let Ok(number) = number.parse::<u64>() else {
            return Err(RobotSimCliError::BadServer(spec.clone()));
        };
        if name.is_empty() {
            return Err(RobotSimCliError::BadServer(spec.clone()));
        }
        servers.push(RobotServer::new(number, name));
    }
    if servers.is_empty() {
        servers.push(RobotServer::new(321, "server-1"));
    }
    let Some(drive_bytes) = parse_size(&args.robot_drive_size) else {
        return Err(RobotSimCliError::BadDriveSize(
            args.robot_drive_size.clone(),
        ));
    };
    for server in &mut servers {
        for drive in &mut server.drives {
            drive.size_bytes = drive_bytes;
        }
    }
    for fault in &args.robot_faults {
        let parsed = fault
            .split_once(':')
            .and_then(|(kind, number)| Some((kind, number.parse::<u64>().ok()?)));
        let applied = parsed.and_then(|(kind, number)| {
            let server = servers.iter_mut().find(|server| server.number == number)?;
            match kind {
                "ignore-sw-reset" => server.ignore_sw_reset = true,
                "rescue-never-boots" => server.rescue_never_boots = true,
                _ => return None,
            }
            Some(())
        });
        if applied.is_none() {
            return Err(RobotSimCliError::BadFault(fault.clone()));
        }
    }
    let (password, generated_password) = match &args.robot_password {
        Some(password) if !password.is_empty() => (password.clone(), None),
        _ => {
            // 20 characters, like the passwords Robot generates for web service users.
            let password: String = rand::rng()
                .sample_iter(&Alphanumeric)
                .take(20)
                .map(char::from)
                .collect();
            (password.clone(), Some(password))
        }
    };
    let sim = RobotSim::start(RobotSimConfig {
        user: args.robot_user.clone(),
        password,
        listen,
        time,
        servers,
        machines,
        ..Default::default()
    })
    .await?;
    Ok(Some(ServedRobot {
        sim,
        generated_password,
    }))
}
