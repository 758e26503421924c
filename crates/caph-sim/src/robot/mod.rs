//! The Hetzner Robot webservice simulator: dedicated servers, rescue activation, resets and SSH keys over real HTTP.
//!
//! [`RobotSim::start`] serves the API on a loopback socket (`http://127.0.0.1:PORT/`) with the wire
//! format of the reference (`shared/reference/robot-and-installimage.md`, section 1), so the real
//! client is tested over a real socket:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use caph_sim::hcloud::TimeMode;
//! use caph_sim::robot::{Fault, RobotServer, RobotSim, RobotSimConfig};
//! let sim = RobotSim::start(RobotSimConfig {
//!     user: "robot-user".into(),
//!     password: "secret".into(),
//!     time: TimeMode::Scaled(0.001),
//!     servers: vec![RobotServer::new(321, "node-1")],
//!     ..Default::default()
//! })
//! .await?;
//! let endpoint = sim.url(); // "http://127.0.0.1:PORT"
//! sim.inject(Fault::fail("POST /reset/{server-number}", 1, 500, "RESET_FAILED"));
//! # Ok(()) }
//! ```
//!
//! # Routes
//! `GET /server`, `GET/POST /server/{server-number}`, `GET/POST/DELETE /boot/{server-number}/rescue`,
//! `GET /boot/{server-number}/rescue/last`, `GET/POST /reset/{server-number}`, `GET/POST /key`,
//! `GET/POST/DELETE /key/{fingerprint}` ([`routes`] lists them). Anything else is 404 `NOT_FOUND`.
//!
//! # Order of checks for each request
//! route (404 `NOT_FOUND`) → source IP blocked after three failed logins (401 `UNAUTHORIZED`, for
//! 10 minutes of simulated time) → Basic auth (401 `UNAUTHORIZED`) → the route's hourly limit (403
//! `RATE_LIMIT_EXCEEDED` with `max_requests` and `interval`) → injected request faults → the
//! handler.
//!
//! # Resets and boots
//! `POST /reset` takes the machine down at once and boots it after the type's duration
//! ([`RobotDurations`]): into the rescue system while an activation is pending (which clears the
//! activation: it is one-shot, and `GET /boot/{n}/rescue/last` keeps it), else from the disk. A
//! server with `ignore_sw_reset` answers a `sw` reset and does nothing (a hung OS); one with
//! `rescue_never_boots` stays down when it should boot the rescue system.
//!
//! # Time
//! Durations are simulated time; [`TimeMode::Scaled`] maps them onto real time, [`TimeMode::Manual`]
//! freezes them until [`RobotSim::advance`] (then [`RobotSim::settle`] waits until due boots are
//! done). Rate-limit windows and login blocks run on simulated time too.
//!
//! # Choices where the reference is silent
//! A blocked IP gets 401 `UNAUTHORIZED` whatever its credentials; only `GET /server` and
//! `POST /server/{n}` are limited by default (200 an hour); `DELETE /key/{fp}` answers 200 with
//! an empty body; `DELETE` of an inactive rescue answers the inactive shape;
//! `GET /boot/{n}/rescue/last` before any activation is 404 `NOT_FOUND`.

mod api;
mod cli;
mod clock;
mod disk;
mod form;
mod keys;
mod machines;
mod ssh;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::http::{self, BodyError, DropConnection, Limits, RequestLog};

pub use crate::hcloud::TimeMode;
pub use api::routes;
pub use cli::{RobotArgs, RobotSimCliError, ServedRobot, serve_from_args};
pub use disk::read_installed_system;
pub use machines::{
    RescueBoot, RobotAddressOnly, RobotDrive, RobotMachineSpec, RobotMachines, Running,
};
pub use ssh::{
    RESCUE_PACKAGES, RESCUE_TEMPLATE_CACHE, RESCUE_TOOLS, SshRobotConfig, SshRobotMachines,
};
/// A fixed address with a forwarder to whichever machine is up: the hcloud simulator's servers
/// keep their address across rescue boots the same way.
pub(crate) use ssh::{allocate_address, spawn_forwarder};

use api::ApiError;
use clock::{Clock, SimTime};

/// A dedicated server of the simulated account.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotServer {
    pub number: u64,
    pub name: String,
    pub product: String,
    pub dc: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub uefi: bool,
    pub drives: Vec<RobotDrive>,
    /// A `sw` reset is answered and ignored, as by a hung OS (to test sw→hw escalation).
    pub ignore_sw_reset: bool,
    /// A boot into the rescue system never happens: the server stays down.
    pub rescue_never_boots: bool,
}

impl RobotServer {
    /// An EX44-like x86_64 server booting by BIOS with two 512 GB drives (`/dev/sda`, `/dev/sdb`).
    pub fn new(number: u64, name: &str) -> RobotServer {
        // 512 GB, as sold (decimal gigabytes).
        const DRIVE_BYTES: u64 = 512_110_190_592;
        RobotServer {
            number,
            name: name.to_owned(),
            product: "EX44".into(),
            dc: "FSN1-DC14".into(),
            arch: "x86_64".into(),
            uefi: false,
            // Two NVMe-class drives with the identity a real one reports (lsblk's WWN, MODEL
            // and SERIAL), unique per server and drive.
            drives: ["/dev/sda", "/dev/sdb"]
                .into_iter()
                .enumerate()
                .map(|(index, device)| RobotDrive {
                    wwn: Some(format!(
                        "0x5002538e{:08x}",
                        (number << 4) as u32 | index as u32
                    )),
                    model: Some("SAMSUNG MZVL2512HCJQ-00B00".into()),
                    serial: Some(format!("S6JNNX0T{number:06}{index}")),
                    ..RobotDrive::new(device, DRIVE_BYTES)
                })
                .collect(),
            ignore_sw_reset: false,
            rescue_never_boots: false,
        }
    }
}

/// How long resets take in simulated time, from the request until the machine has booted.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotDurations {
    /// `sw` (CTRL+ALT+DEL): the OS shuts down, then the machine boots.
    pub reset_sw: Duration,
    /// `hw`, `power` and `power_long`.
    pub reset_hw: Duration,
    /// `man`: a technician walks to the rack.
    pub reset_man: Duration,
    /// How long an IP stays blocked after three failed logins.
    pub login_block: Duration,
}

impl Default for RobotDurations {
    fn default() -> Self {
        RobotDurations {
            reset_sw: Duration::from_secs(90),
            reset_hw: Duration::from_secs(60),
            reset_man: Duration::from_secs(15 * 60),
            login_block: Duration::from_secs(10 * 60),
        }
    }
}

/// An hourly (or other) request limit on one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// `METHOD /template` as in [`routes`], e.g. `GET /server`.
    pub route: String,
    pub max_requests: u32,
    pub interval: Duration,
}

impl RateLimit {
    /// The limits the reference names: `GET /server` 200 an hour; renaming likewise.
    pub fn defaults() -> Vec<RateLimit> {
        const HOUR: Duration = Duration::from_secs(3600);
        vec![
            RateLimit {
                route: "GET /server".into(),
                max_requests: 200,
                interval: HOUR,
            },
            RateLimit {
                route: "POST /server/{server-number}".into(),
                max_requests: 200,
                interval: HOUR,
            },
        ]
    }
}

/// Everything a simulator starts from.
#[derive(Clone)]
pub struct RobotSimConfig {
    /// The web service user accepted by Basic auth.
    pub user: String,
    pub password: String,
    /// Where to listen; default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    pub time: TimeMode,
    pub durations: RobotDurations,
    pub servers: Vec<RobotServer>,
    /// Per-route limits; default [`RateLimit::defaults`].
    pub rate_limits: Vec<RateLimit>,
    /// The machines behind servers; default [`RobotAddressOnly`].
    pub machines: Arc<dyn RobotMachines>,
    /// What one client may make the simulator hold ([`crate::http`]).
    pub limits: Limits,
}

impl std::fmt::Debug for RobotSimConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RobotSimConfig")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("listen", &self.listen)
            .field("time", &self.time)
            .field("durations", &self.durations)
            .field("servers", &self.servers)
            .field("rate_limits", &self.rate_limits)
            .field("machines", &self.machines)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for RobotSimConfig {
    fn default() -> Self {
        RobotSimConfig {
            user: String::new(),
            password: String::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            time: TimeMode::default(),
            durations: RobotDurations::default(),
            servers: Vec::new(),
            rate_limits: RateLimit::defaults(),
            machines: Arc::new(RobotAddressOnly::default()),
            limits: Limits::default(),
        }
    }
}

/// A scripted failure. Request faults name a route as `METHOD /template` (see [`routes`]) and
/// fire on the `nth` matching request (1 = the next one) counted from injection.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with a Robot error body instead of serving the request.
    FailRequest {
        route: String,
        nth: u32,
        status: u16,
        code: String,
        message: String,
    },
    /// Close the connection without an answer; the request is not served.
    DropConnection { route: String, nth: u32 },
    /// Serve the request, then close the connection without an answer.
    DropResponse { route: String, nth: u32 },
    /// Serve the request and hold the answer back for `delay` of real time.
    Delay {
        route: String,
        nth: u32,
        delay: Duration,
    },
    /// From now on the server ignores `sw` resets (applies at once and stays).
    IgnoreSwReset { server_number: u64 },
    /// From now on the server never comes up in the rescue system (applies at once and stays).
    RescueNeverBoots { server_number: u64 },
}

impl Fault {
    /// `FailRequest` with a generic message.
    pub fn fail(route: &str, nth: u32, status: u16, code: &str) -> Fault {
        Fault::FailRequest {
            route: route.to_owned(),
            nth,
            status,
            code: code.to_owned(),
            message: format!("injected {code}"),
        }
    }

    fn request_route(&self) -> Option<(&str, u32)> {
        match self {
            Fault::FailRequest { route, nth, .. }
            | Fault::DropConnection { route, nth }
            | Fault::DropResponse { route, nth }
            | Fault::Delay { route, nth, .. } => Some((route.as_str(), *nth)),
            Fault::IgnoreSwReset { .. } | Fault::RescueNeverBoots { .. } => None,
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The matched template, e.g. `/boot/{server-number}/rescue`; `None` for an unknown route.
    pub route: Option<String>,
    /// The status sent; `None` when the connection was dropped without an answer.
    pub status: Option<u16>,
    /// The decoded form body of a POST, passwords left out (for tests of what a client sent).
    pub form: Vec<(String, String)>,
}

/// What a server's machine is doing, as the simulator scheduled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Booted from its disk.
    Disk,
    /// Booted into the rescue system.
    Rescue,
    /// Down after a reset, waiting for its boot (or forever, see `rescue_never_boots`).
    Down,
}

/// A server as [`RobotSim::state`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub number: u64,
    pub name: String,
    pub ip: Ipv4Addr,
    pub power: Power,
    /// A rescue activation is pending (it clears when the server boots into rescue).
    pub rescue_active: bool,
    /// Every reset type accepted, in order (ignored `sw` resets included).
    pub resets: Vec<String>,
    /// Reboots asked for from inside the machine (`reboot` over SSH).
    pub os_reboots: u32,
    /// Times the machine booted into the rescue system.
    pub rescue_boots: u32,
    /// Errors the machine host reported, in order.
    pub machine_errors: Vec<String>,
}

/// An SSH key of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub name: String,
    pub fingerprint: String,
    pub data: String,
}

/// A snapshot of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotState {
    pub servers: Vec<ServerState>,
    pub keys: Vec<KeyState>,
}

#[derive(Clone)]
pub(crate) struct Activation {
    pub(crate) os: String,
    pub(crate) arch: u32,
    pub(crate) keyboard: String,
    pub(crate) password: String,
    pub(crate) keys: Vec<KeyRec>,
}

#[derive(Debug, Clone)]
pub(crate) struct KeyRec {
    pub(crate) name: String,
    pub(crate) fingerprint: String,
    pub(crate) kind: String,
    pub(crate) size: u32,
    pub(crate) data: String,
    pub(crate) created_at: String,
}

pub(crate) struct ServerRec {
    pub(crate) spec: RobotServer,
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) paid_until: String,
    pub(crate) rescue: Option<Activation>,
    pub(crate) last_rescue: Option<Activation>,
    pub(crate) power: Power,
    /// Bumped by every reset, so a boot scheduled by an earlier reset is dropped.
    pub(crate) generation: u64,
    pub(crate) resets: Vec<String>,
    pub(crate) os_reboots: u32,
    pub(crate) rescue_boots: u32,
    pub(crate) machine_errors: Vec<String>,
}

/// Work for the machine host, done in order by the scheduler task.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) due: SimTime,
    pub(crate) server: u64,
    pub(crate) generation: u64,
    pub(crate) kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    PowerOff,
    Boot,
}

struct PendingFault {
    fault: Fault,
    seen: u32,
}

#[derive(Default)]
struct LoginRecord {
    failures: u32,
    blocked_until: Option<SimTime>,
}

pub(crate) struct World {
    pub(crate) servers: BTreeMap<u64, ServerRec>,
    pub(crate) keys: Vec<KeyRec>,
    pub(crate) events: Vec<Event>,
    faults: Vec<PendingFault>,
    request_log: RequestLog<RequestRecord>,
    logins: HashMap<IpAddr, LoginRecord>,
    /// Per route: start of the current window and requests counted in it.
    windows: HashMap<String, (SimTime, u32)>,
    /// Servers whose machine is being powered off or booted right now.
    busy: std::collections::HashSet<u64>,
}

pub(crate) struct Inner {
    user: String,
    password: String,
    pub(crate) clock: Arc<Clock>,
    pub(crate) durations: RobotDurations,
    rate_limits: Vec<RateLimit>,
    machines: Arc<dyn RobotMachines>,
    max_body_bytes: usize,
    world: Mutex<World>,
    /// Wakes the scheduler when an event is added.
    wake: tokio::sync::Notify,
}

impl Inner {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn schedule(&self, world: &mut World, event: Event) {
        world.events.push(event);
        self.wake.notify_one();
    }
}

/// A running simulator; dropping it stops serving.
#[derive(Debug)]
pub struct RobotSim {
    inner: Arc<Inner>,
    address: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Inner")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Drop for RobotSim {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How long [`RobotSim::settle`] waits for due boots (a real machine boot copies a root
/// filesystem and starts sshd, which can take a minute on a busy disk).
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RobotSimError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("server {number}: {message}")]
    Machine { number: u64, message: String },
    #[error("server number {0} is configured twice")]
    DuplicateServer(u64),
}

impl From<RobotSimError> for std::io::Error {
    fn from(error: RobotSimError) -> std::io::Error {
        std::io::Error::other(error.to_string())
    }
}

impl RobotSim {
    /// Creates every server's machine, binds the listen address and starts serving.
    pub async fn start(config: RobotSimConfig) -> Result<RobotSim, RobotSimError> {
        let clock = Clock::new(config.time);
        let mut servers = BTreeMap::new();
        for spec in config.servers {
            if servers.contains_key(&spec.number) {
                return Err(RobotSimError::DuplicateServer(spec.number));
            }
            let machine = RobotMachineSpec {
                server_number: spec.number,
                server_name: spec.name.clone(),
                arch: spec.arch.clone(),
                uefi: spec.uefi,
                drives: spec.drives.clone(),
            };
            let ip =
                config
                    .machines
                    .create(&machine)
                    .await
                    .map_err(|error| RobotSimError::Machine {
                        number: spec.number,
                        message: error.0,
                    })?;
            servers.insert(
                spec.number,
                ServerRec {
                    name: spec.name.clone(),
                    ip,
                    paid_until: clock.date_after(Duration::ZERO, 30),
                    spec,
                    rescue: None,
                    last_rescue: None,
                    power: Power::Disk,
                    generation: 0,
                    resets: Vec::new(),
                    os_reboots: 0,
                    rescue_boots: 0,
                    machine_errors: Vec::new(),
                },
            );
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RobotSimError::Listen {
                    address: config.listen,
                    source,
                })?;
        let address = listener
            .local_addr()
            .map_err(|source| RobotSimError::Listen {
                address: config.listen,
                source,
            })?;
        let inner = Arc::new(Inner {
            user: config.user,
            password: config.password,
            clock,
            durations: config.durations,
            rate_limits: config.rate_limits,
            machines: config.machines,
            max_body_bytes: config.limits.max_body_bytes,
            world: Mutex::new(World {
                servers,
                keys: Vec::new(),
                events: Vec::new(),
                faults: Vec::new(),
                request_log: RequestLog::new(config.limits.request_log),
                logins: HashMap::new(),
                windows: HashMap::new(),
                busy: std::collections::HashSet::new(),
            }),
            wake: tokio::sync::Notify::new(),
        });
        let serving = Arc::clone(&inner);
        let acceptor = http::serve(listener, config.limits, move |peer, request| {
            handle(Arc::clone(&serving), peer.ip(), request)
        });
        let scheduler = tokio::spawn(schedule_loop(Arc::clone(&inner)));
        let mut tasks = vec![acceptor, scheduler];
        if let Some(mut requests) = inner.machines.reboot_requests() {
            let rebooting = Arc::clone(&inner);
            tasks.push(tokio::spawn(async move {
                while let Some(server_number) = requests.recv().await {
                    os_reboot(&rebooting, server_number);
                }
            }));
        }
        Ok(RobotSim {
            inner,
            address,
            tasks,
        })
    }

    /// `http://ADDR` (the API lives at the root, like `https://robot-ws.your-server.de`).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Queues a request fault, or applies a server fault at once (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        let mut world = self.inner.world();
        match &fault {
            Fault::IgnoreSwReset { server_number } => {
                if let Some(server) = world.servers.get_mut(server_number) {
                    server.spec.ignore_sw_reset = true;
                }
            }
            Fault::RescueNeverBoots { server_number } => {
                if let Some(server) = world.servers.get_mut(server_number) {
                    server.spec.rescue_never_boots = true;
                }
            }
            _ => world.faults.push(PendingFault { fault, seen: 0 }),
        }
    }

    /// Request faults injected and not yet fired.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.inner
            .world()
            .faults
            .iter()
            .map(|pending| pending.fault.clone())
            .collect()
    }

    /// Servers and keys now. In [`TimeMode::Manual`], call [`RobotSim::settle`] after
    /// [`RobotSim::advance`] first.
    pub fn state(&self) -> RobotState {
        let world = self.inner.world();
        RobotState {
            servers: world
                .servers
                .values()
                .map(|server| ServerState {
                    number: server.spec.number,
                    name: server.name.clone(),
                    ip: server.ip,
                    power: server.power,
                    rescue_active: server.rescue.is_some(),
                    resets: server.resets.clone(),
                    os_reboots: server.os_reboots,
                    rescue_boots: server.rescue_boots,
                    machine_errors: server.machine_errors.clone(),
                })
                .collect(),
            keys: world
                .keys
                .iter()
                .map(|key| KeyState {
                    name: key.name.clone(),
                    fingerprint: key.fingerprint.clone(),
                    data: key.data.clone(),
                })
                .collect(),
        }
    }

    /// The password of the pending rescue activation of a server (tests log in with it).
    pub fn rescue_password(&self, server_number: u64) -> Option<String> {
        let world = self.inner.world();
        let server = world.servers.get(&server_number)?;
        server
            .rescue
            .as_ref()
            .or(server.last_rescue.as_ref())
            .map(|activation| activation.password.clone())
    }

    /// Moves simulated time forward in [`TimeMode::Manual`] (no effect in scaled mode).
    pub fn advance(&self, by: Duration) {
        self.inner.clock.advance(by);
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Waits until every power-off and boot due now has been applied; false after three minutes
    /// of real time (a machine host hangs).
    pub async fn settle(&self) -> bool {
        settle(&self.inner, SETTLE_LIMIT).await
    }

    /// Every request seen so far, in order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.world().request_log.to_vec()
    }
}

/// `reboot` run on the machine: down at once, up again after the `sw` reset time.
fn os_reboot(inner: &Inner, server_number: u64) {
    let now = inner.clock.now();
    let mut world = inner.world();
    let Some(server) = world.servers.get_mut(&server_number) else {
        return;
    };
    server.os_reboots += 1;
    server.generation += 1;
    let generation = server.generation;
    for (due, kind) in [
        (now, EventKind::PowerOff),
        (now + inner.durations.reset_sw, EventKind::Boot),
    ] {
        inner.schedule(
            &mut world,
            Event {
                due,
                server: server_number,
                generation,
                kind,
            },
        );
    }
}

async fn settle(inner: &Inner, limit: Duration) -> bool {
    // How often to look again: short enough that tests stay in milliseconds.
    const POLL: Duration = Duration::from_millis(1);
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        {
            let world = inner.world();
            let now = inner.clock.now();
            if world.busy.is_empty() && world.events.iter().all(|event| event.due > now) {
                return true;
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Applies power-offs and boots when they fall due: in due order for each server, and
/// servers side by side (a rescue boot with real machines takes seconds).
async fn schedule_loop(inner: Arc<Inner>) {
    // Aborting the scheduler (the simulator is dropped) aborts what it started.
    let mut running = tokio::task::JoinSet::new();
    loop {
        loop {
            let event = {
                let mut world = inner.world();
                let now = inner.clock.now();
                let Some(position) = world
                    .events
                    .iter()
                    .enumerate()
                    .filter(|(_, event)| event.due <= now && !world.busy.contains(&event.server))
                    .min_by_key(|(_, event)| event.due)
                    .map(|(position, _)| position)
                else {
                    break;
                };
                let event = world.events.remove(position);
                world.busy.insert(event.server);
                event
            };
            let applying = Arc::clone(&inner);
            running.spawn(async move {
                let server = event.server;
                apply(&applying, event).await;
                applying.world().busy.remove(&server);
                // The server's next event may be due already.
                applying.wake.notify_one();
            });
        }
        while running.try_join_next().is_some() {}
        let next_due = {
            let world = inner.world();
            world
                .events
                .iter()
                .filter(|event| !world.busy.contains(&event.server))
                .map(|event| event.due)
                .min()
        };
        match next_due {
            None => inner.wake.notified().await,
            Some(due) => {
                tokio::select! {
                    _ = inner.clock.sleep_until(due) => {}
                    // An earlier event, or a server became idle: look again.
                    _ = inner.wake.notified() => {}
                }
            }
        }
    }
}

async fn apply(inner: &Inner, event: Event) {
    let boot = {
        let mut world = inner.world();
        let Some(server) = world.servers.get_mut(&event.server) else {
            return;
        };
        if server.generation != event.generation {
            // A later reset superseded this one.
            return;
        }
        match event.kind {
            EventKind::PowerOff => {
                server.power = Power::Down;
                None
            }
            EventKind::Boot => match server.rescue.take() {
                Some(activation) if server.spec.rescue_never_boots => {
                    // The machine hangs before the rescue system runs: the activation stays.
                    server.rescue = Some(activation);
                    return;
                }
                Some(activation) => {
                    server.power = Power::Rescue;
                    server.rescue_boots += 1;
                    server.last_rescue = Some(activation.clone());
                    Some(Some(RescueBoot {
                        authorized_keys: activation
                            .keys
                            .iter()
                            .map(|key| key.data.clone())
                            .collect(),
                        password: activation.password,
                    }))
                }
                None => {
                    server.power = Power::Disk;
                    Some(None)
                }
            },
        }
    };
    let result = match boot {
        None => inner.machines.power_off(event.server).await,
        Some(Some(rescue)) => inner.machines.boot_rescue(event.server, &rescue).await,
        Some(None) => inner.machines.boot_disk(event.server).await,
    };
    if let Err(error) = result
        && let Some(server) = inner.world().servers.get_mut(&event.server)
    {
        server.machine_errors.push(error.0);
    }
}

/// What an injected request fault asks for.
enum Injected {
    Fail(ApiError),
    Drop,
    DropAfter,
    Delay(Duration),
}

fn take_request_fault(inner: &Inner, method: &str, template: &str) -> Option<Injected> {
    let mut world = inner.world();
    let mut fired = None;
    for (index, pending) in world.faults.iter_mut().enumerate() {
        let Some((route, nth)) = pending.fault.request_route() else {
            continue;
        };
        let Some((fault_method, fault_template)) = route.split_once(' ') else {
            continue;
        };
        if !fault_method.eq_ignore_ascii_case(method) || fault_template.trim() != template {
            continue;
        }
        pending.seen += 1;
        if fired.is_none() && pending.seen >= nth {
            fired = Some(index);
        }
    }
    let fault = world.faults.remove(fired?).fault;
    Some(match fault {
        Fault::FailRequest {
            status,
            code,
            message,
            ..
        } => Injected::Fail(ApiError::new(status, &code, &message)),
        Fault::DropConnection { .. } => Injected::Drop,
        Fault::DropResponse { .. } => Injected::DropAfter,
        Fault::Delay { delay, .. } => Injected::Delay(delay),
        Fault::IgnoreSwReset { .. } | Fault::RescueNeverBoots { .. } => return None,
    })
}

/// Checks Basic credentials; the password is compared and never kept or logged.
fn credentials_match(inner: &Inner, header: Option<&hyper::header::HeaderValue>) -> bool {
    use base64::Engine as _;
    let Some(value) = header.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    // An unconfigured user would otherwise accept an empty login.
    !inner.user.is_empty() && user == inner.user && password == inner.password
}

/// Applies the login rules; `Err` is the 401 to send.
fn check_login(inner: &Inner, source: IpAddr, good: bool) -> Result<(), ApiError> {
    // Failed logins in a row that block the source address (the real service's number).
    const FAILURES_BEFORE_BLOCK: u32 = 3;
    let now = inner.clock.now();
    let mut world = inner.world();
    let record = world.logins.entry(source).or_default();
    if let Some(until) = record.blocked_until {
        if now < until {
            return Err(ApiError::new(
                401,
                "UNAUTHORIZED",
                "Unauthorized: too many failed logins, this address is blocked for 10 minutes",
            ));
        }
        record.blocked_until = None;
        record.failures = 0;
    }
    if good {
        record.failures = 0;
        return Ok(());
    }
    record.failures += 1;
    if record.failures >= FAILURES_BEFORE_BLOCK {
        record.blocked_until = Some(now + inner.durations.login_block);
    }
    Err(ApiError::new(401, "UNAUTHORIZED", "Unauthorized"))
}

fn check_rate(inner: &Inner, method: &str, template: &str) -> Result<(), ApiError> {
    let route = format!("{method} {template}");
    let Some(limit) = inner.rate_limits.iter().find(|limit| limit.route == route) else {
        return Ok(());
    };
    let now = inner.clock.now();
    let mut world = inner.world();
    let window = world.windows.entry(route).or_insert((now, 0));
    if now >= window.0 + limit.interval {
        *window = (now, 0);
    }
    if window.1 >= limit.max_requests {
        return Err(ApiError::rate_limited(
            limit.max_requests,
            limit.interval.as_secs(),
        ));
    }
    window.1 += 1;
    Ok(())
}

async fn handle(
    inner: Arc<Inner>,
    source: IpAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let good = credentials_match(&inner, request.headers().get(hyper::header::AUTHORIZATION));
    let mut logged_form = Vec::new();
    let record =
        |status: Option<u16>, template: Option<&str>, form: &[(String, String)]| RequestRecord {
            method: http::for_log(&method),
            path: http::for_log(&path),
            route: template.map(str::to_owned),
            status,
            form: form.to_vec(),
        };
    let Some((template, params)) = api::match_route(&method, &path) else {
        let error = ApiError::new(404, "NOT_FOUND", "Not Found");
        inner
            .world()
            .request_log
            .push(record(Some(404), None, &logged_form));
        return Ok(respond(error.status, Some(error.body())));
    };
    // The client is checked before a byte of its body is read.
    let checked =
        check_login(&inner, source, good).and_then(|()| check_rate(&inner, &method, template));
    if let Err(error) = checked {
        inner
            .world()
            .request_log
            .push(record(Some(error.status), Some(template), &logged_form));
        return Ok(respond(error.status, Some(error.body())));
    }
    let body = match http::read_body(request, inner.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let error = ApiError::new(413, "PAYLOAD_TOO_LARGE", "Payload Too Large");
            inner
                .world()
                .request_log
                .push(record(Some(413), Some(template), &logged_form));
            return Ok(respond(error.status, Some(error.body())));
        }
        Err(BodyError::Failed) => return Err(DropConnection),
    };
    let form = form::Form::parse(&body);
    logged_form = form.pairs_for_log();
    let record =
        |status: Option<u16>, template: Option<&str>| record(status, template, &logged_form);
    let (drop_after, delay) = match take_request_fault(&inner, &method, template) {
        Some(Injected::Fail(error)) => {
            inner
                .world()
                .request_log
                .push(record(Some(error.status), Some(template)));
            return Ok(respond(error.status, Some(error.body())));
        }
        Some(Injected::Drop) => {
            inner.world().request_log.push(record(None, Some(template)));
            return Err(DropConnection);
        }
        Some(Injected::DropAfter) => (true, None),
        Some(Injected::Delay(delay)) => (false, Some(delay)),
        None => (false, None),
    };
    if inner.clock.mode() == TimeMode::Manual {
        // A stale answer is better than a request that hangs forever on a wedged host.
        let _ = settle(&inner, SETTLE_LIMIT).await;
    }
    let (status, reply) = match api::dispatch(&inner, &method, template, &params, &form) {
        Ok((status, reply)) => (status, reply),
        Err(error) => (error.status, Some(error.body())),
    };
    if drop_after {
        inner.world().request_log.push(record(None, Some(template)));
        return Err(DropConnection);
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    inner
        .world()
        .request_log
        .push(record(Some(status), Some(template)));
    Ok(respond(status, reply))
}

fn respond(status: u16, body: Option<Value>) -> Response<Full<Bytes>> {
    let bytes = body
        .map(|body| Bytes::from(body.to_string()))
        .unwrap_or_default();
    let mut builder = Response::builder().status(status);
    if !bytes.is_empty() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    builder
        .body(Full::new(bytes.clone()))
        .unwrap_or_else(|_| Response::new(Full::new(bytes)))
}
