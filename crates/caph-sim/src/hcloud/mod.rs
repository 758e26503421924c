//! The Hetzner Cloud API simulator: servers, actions, images, SSH keys, server types and locations over real HTTP.
//!
//! [`HcloudSim::start`] serves the API on a loopback socket (`http://127.0.0.1:PORT/v1`) with the
//! wire format, status codes, state machines and checks of the reference
//! (`shared/reference/hcloud-api.md`), so the real client is tested over a real socket:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use caph_sim::hcloud::{Fault, HcloudSim, HcloudSimConfig, TimeMode};
//! let sim = HcloudSim::start(HcloudSimConfig {
//!     token: "test-token".into(),
//!     time: TimeMode::Scaled(0.001),
//!     record_responses: true,
//!     ..Default::default()
//! })
//! .await?;
//! let endpoint = sim.api_url(); // "http://127.0.0.1:PORT/v1"
//! sim.inject(Fault::FailRequest {
//!     route: "POST /servers/{id}/actions/create_image".into(),
//!     nth: 1,
//!     status: 503,
//!     code: "unavailable".into(),
//!     message: "service unavailable".into(),
//! });
//! # Ok(()) }
//! ```
//!
//! # Routes
//! `GET/POST /servers`, `GET/PUT/DELETE /servers/{id}`, `GET /servers/{id}/actions[/{action_id}]`,
//! `POST /servers/{id}/actions/{shutdown,poweroff,poweron,reset,reboot,enable_rescue,disable_rescue,create_image,change_protection}`,
//! `GET /actions?id=..`, `GET /actions/{id}`, `GET /images`, `GET/PUT/DELETE /images/{id}`,
//! `POST /images/{id}/actions/change_protection`, `GET/POST /ssh_keys`, `GET/PUT/DELETE /ssh_keys/{id}`,
//! `GET /server_types[/{id}]`, `GET /locations[/{id}]` ([`routes`] lists them). Anything else is
//! 404 `not_found`, even without a token.
//!
//! # Order of checks for each request
//! route (404) → token (401 `unauthorized`) → rate limit (429 `rate_limit_exceeded`) → injected
//! request faults → the handler. Every answer carries `X-Correlation-Id`, `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`.
//!
//! # Time
//! All durations ([`Durations`]) are simulated time; [`TimeMode::Scaled`] maps them onto real time,
//! [`TimeMode::Manual`] freezes them until [`HcloudSim::advance`]. In manual mode each request first
//! waits until everything that became due has been applied (host calls included), so a test sees a
//! consistent state; [`HcloudSim::settle`] does the same for [`HcloudSim::state`]. Timestamps in
//! bodies are the simulated wall clock (real start time + simulated time). The rate limit runs in
//! real time, because clients compare `RateLimit-Reset` with their own clock.
//!
//! # Faults
//! [`HcloudSim::inject`] queues a [`Fault`]. Request faults count the matching requests from the
//! moment they are injected and fire on the `nth` one; several faults fire in injection order and
//! each is consumed when it fires. Route templates are those of [`routes`] (as in the OpenAPI
//! description), e.g. `POST /servers/{id}/actions/create_image`; a template that matches no route
//! never fires. Kinds: [`Fault::FailRequest`] (an error answer), [`Fault::DropConnection`] (closed
//! unanswered, not served), [`Fault::DropResponse`] (served, then closed unanswered),
//! [`Fault::Delay`], [`Fault::FailAction`] (the next action of a command ends in `error`),
//! [`Fault::IgnoreShutdown`] (ACPI ignored), [`Fault::ExhaustServerType`] (a location sells out)
//! and [`Fault::SellOut`] (a location sells out when a given request arrives, as when stock goes
//! between a client's listing and its order).
//!
//! # Stock
//! Each server type has a stock per location ([`TypeLocation::stock`], unlimited by default):
//! a create takes one, a deleted server gives it back, and at zero the type is listed
//! `available: false` there and a create answers `resource_unavailable`.
//! [`HcloudSim::set_stock`] changes it during a run.
//!
//! # State for assertions
//! [`HcloudSim::state`] returns plain structs ([`SimState`]: servers, images, SSH keys, actions);
//! [`HcloudSim::request_log`] every request with its route and status (for counting API calls);
//! [`HcloudSim::recorded_responses`] every answer with its body when `record_responses` is set,
//! for [`crate::openapi::Validator::check_all`]. [`HcloudSim::add_snapshot`] seeds snapshots a
//! test needs to exist already.
//!
//! # An API that grows
//! With `extra_fields` every object with an `id` carries a field no client knows; unknown enum
//! values come from changing the [`Catalog`] (e.g. a server type with `cpu_type: "hybrid"`).
//! Both check that a client stays lenient where the live API evolves.
//!
//! # Data
//! Locations fsn1, nbg1, hel1 (eu-central), ash (us-east), hil (us-west), sin (ap-southeast).
//! Server types cx23, cx33, cx43 (x86), cax11, cax21 (arm) in the EU, ccx13 (x86, dedicated)
//! everywhere, cx22 retired (deprecated, no longer orderable), cx43 sold out in hel1. System
//! images ubuntu-22.04, ubuntu-24.04, debian-12, debian-13 for x86 and arm (distinct ids) and a
//! deprecated ubuntu-20.04. [`Catalog`] holds it all and can be changed through the config.
//!
//! # Machines
//! A [`MachineHost`] gives each server its machine: `create` during `POST /servers` (its address
//! becomes `public_net.ipv4.ip`), `power_on` when a server reaches `running`, `power_off` when it
//! reaches `off`, `snapshot` at the start of `create_image` (its byte count becomes `image_size`
//! and lengthens the action), `delete` when `delete_server` ends and `delete_image` when a
//! snapshot is deleted. An error from the host ends the action in `error` (`action_failed`).
//!
//! # Choices where the reference is silent
//! `resource_unavailable` answers 412 "error during placement" as seen live; `invalid_input`
//! answers 400; `locked` and `protected` 423; deleting or changing a system image is 403
//! `forbidden`; a server may be deleted while an action runs; `datacenter` in `POST /servers` is
//! `invalid_input` (the field is gone); a failed `create_image` removes its image; `GET /actions`
//! without `id` is `invalid_input`.

mod api;
mod catalog;
mod checks;
mod clock;
mod cloud_machines;
mod error;
mod model;
mod ops;
mod query;
mod world;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::Rng as _;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::http::{self, BodyError, DropConnection, Limits, RequestLog};

pub use api::routes;
pub use catalog::{Catalog, Deprecation, Location, ServerType, SystemImage, TypeLocation};
pub use clock::TimeMode;
pub use cloud_machines::{
    CLOUD_RESCUE_EXTRA_PACKAGES, CLOUD_RESCUE_TEMPLATE_CACHE, CloudMachines, CloudMachinesConfig,
};
pub use model::{
    Action, ActionResource, ActionStatus, Image, ImageKind, ImageStatus, Server, ServerStatus,
    SimState, SshKey,
};

use crate::host::{AddressOnly, MachineHost};
use error::ApiError;
use query::Query;
use world::{Bucket, Inner, PendingFault};

/// How long each operation takes in simulated time (multiplied by [`TimeMode::Scaled`]'s factor).
/// The defaults follow the reference: create to running about 28 s, shutdown a few seconds,
/// snapshots 1-5 minutes growing with the used disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// `create_server`: `initializing` until `off`.
    pub create: Duration,
    /// `start_server` after create: `starting` until `running`.
    pub start: Duration,
    /// `shutdown`: until the action reports success (the ACPI signal is sent).
    pub shutdown_signal: Duration,
    /// `shutdown`: from the request until the server is `off`.
    pub shutdown: Duration,
    /// `poweroff`: `stopping` until `off`.
    pub poweroff: Duration,
    /// `poweron`: `starting` until `running`.
    pub poweron: Duration,
    /// `reset` and `reboot`.
    pub reset: Duration,
    /// `delete_server`: `deleting` until 404.
    pub delete: Duration,
    /// `enable_rescue` and `disable_rescue`.
    pub rescue: Duration,
    /// `change_protection`.
    pub change_protection: Duration,
    /// `create_image`: fixed part.
    pub snapshot_base: Duration,
    /// `create_image`: added per GB the host reports as used.
    pub snapshot_per_gb: Duration,
}

impl Default for Durations {
    fn default() -> Self {
        let seconds = Duration::from_secs;
        Durations {
            create: seconds(12),
            start: seconds(16),
            shutdown_signal: seconds(1),
            shutdown: seconds(6),
            poweroff: seconds(3),
            poweron: seconds(10),
            reset: seconds(12),
            delete: seconds(4),
            rescue: seconds(2),
            change_protection: seconds(1),
            snapshot_base: seconds(60),
            snapshot_per_gb: seconds(20),
        }
    }
}

/// Everything a simulator starts from.
#[derive(Clone)]
pub struct HcloudSimConfig {
    /// The only bearer token accepted; an empty token accepts none.
    pub token: String,
    /// Where to listen; default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    /// How simulated time moves.
    pub time: TimeMode,
    /// How long each operation takes.
    pub durations: Durations,
    /// Token bucket size (`RateLimit-Limit`); default 3600 as for most projects.
    pub rate_limit_capacity: u32,
    /// Tokens added per real second; default 1.
    pub rate_limit_refill_per_second: f64,
    /// The machines behind servers; default [`AddressOnly`].
    pub machines: Arc<dyn MachineHost>,
    /// Keep every response for [`HcloudSim::recorded_responses`] (OpenAPI checks).
    pub record_responses: bool,
    /// How many servers the project may have at once, like the limit of a real project (new
    /// projects start with a few); beyond it `POST /servers` answers 403
    /// `resource_limit_exceeded`. `None` (the default) is unlimited.
    pub server_limit: Option<u32>,
    /// Add a field no client knows (`x_future_field`, an object) to every object with an `id`
    /// in every answer, as the live API does when it grows: clients must ignore it.
    pub extra_fields: bool,
    /// Told about every request once it is answered or dropped (the `caph-sim` binary prints
    /// them with `--log-requests`; the library never prints).
    pub on_request: Option<RequestObserver>,
    /// Locations, server types and system images on offer.
    pub catalog: Catalog,
    /// What one client may make the simulator hold ([`crate::http`]).
    pub limits: Limits,
}

impl std::fmt::Debug for HcloudSimConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret even in a simulator: it may be copied from a real one.
        formatter
            .debug_struct("HcloudSimConfig")
            .field("token", &"<redacted>")
            .field("listen", &self.listen)
            .field("time", &self.time)
            .field("durations", &self.durations)
            .field("rate_limit_capacity", &self.rate_limit_capacity)
            .field(
                "rate_limit_refill_per_second",
                &self.rate_limit_refill_per_second,
            )
            .field("machines", &self.machines)
            .field("record_responses", &self.record_responses)
            .field("extra_fields", &self.extra_fields)
            .field(
                "on_request",
                &self.on_request.as_ref().map(|_| "<callback>"),
            )
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for HcloudSimConfig {
    fn default() -> Self {
        HcloudSimConfig {
            token: String::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            time: TimeMode::default(),
            durations: Durations::default(),
            rate_limit_capacity: 3600,
            rate_limit_refill_per_second: 1.0,
            machines: Arc::new(AddressOnly::default()),
            record_responses: false,
            extra_fields: false,
            server_limit: None,
            on_request: None,
            catalog: Catalog::default(),
            limits: Limits::default(),
        }
    }
}

/// A scripted failure. Request faults name a route as `METHOD /template` (see [`routes`]) and
/// fire on the `nth` matching request (1 = the next one) counted from injection.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with an error body instead of serving the request.
    FailRequest {
        /// `METHOD /template`.
        route: String,
        /// Which matching request fails (1 = the next one).
        nth: u32,
        /// HTTP status of the answer.
        status: u16,
        /// API error code, e.g. `unavailable`.
        code: String,
        /// Error message.
        message: String,
    },
    /// Close the connection without an answer; the request is not served.
    DropConnection {
        /// `METHOD /template`.
        route: String,
        /// Which matching request is dropped (1 = the next one).
        nth: u32,
    },
    /// Serve the request, then close the connection without an answer (the change happened, the
    /// client does not know).
    DropResponse {
        /// `METHOD /template`.
        route: String,
        /// Which matching request loses its answer (1 = the next one).
        nth: u32,
    },
    /// Serve the request and hold the answer back for `delay` of real time.
    Delay {
        /// `METHOD /template`.
        route: String,
        /// Which matching request is delayed (1 = the next one).
        nth: u32,
        /// Real time to hold the answer back.
        delay: Duration,
    },
    /// The next action with this `command` (e.g. `create_image`, `start_server`) ends in `error`
    /// with `code` and `message` instead of taking effect.
    FailAction {
        /// Action command, e.g. `create_image`.
        command: String,
        /// Error code of the action.
        code: String,
        /// Error message of the action.
        message: String,
    },
    /// The next `shutdown` of a running server is ignored by its operating system (as when ACPI
    /// is not handled): the action succeeds, the server stays `running` and its machine is not
    /// touched. Clients must fall back to `poweroff`.
    IgnoreShutdown,
    /// The location runs out of the server type: it is listed `available: false` and creating
    /// such a server answers `resource_unavailable`. Applies at once and stays (as
    /// [`HcloudSim::set_stock`] with `Some(0)`).
    ExhaustServerType {
        /// Location name, e.g. `hel1`.
        location: String,
        /// Server type name, e.g. `cx43`.
        server_type: String,
    },
    /// When the `nth` request matching `route` arrives, the location runs out of the server type
    /// before the request is served: what a client read in a listing is gone by the time it
    /// orders (`POST /servers` then answers `resource_unavailable`). The request itself is served
    /// as usual; the sell-out stays.
    SellOut {
        /// `METHOD /template`, e.g. `POST /servers`.
        route: String,
        /// Which matching request finds the stock gone (1 = the next one).
        nth: u32,
        /// Location name, e.g. `fsn1`.
        location: String,
        /// Server type name, e.g. `cx23`.
        server_type: String,
    },
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
            Fault::FailAction { .. }
            | Fault::IgnoreShutdown
            | Fault::ExhaustServerType { .. }
            | Fault::SellOut { .. } => None,
        }
    }
}

/// A snapshot placed straight into the simulator with [`HcloudSim::add_snapshot`]: an image a
/// test needs to exist already (an earlier build, a name collision, a leftover for `gc`). The
/// machine host holds no copy of it, so only [`AddressOnly`] can boot servers from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSeed {
    /// Image description.
    pub description: String,
    /// Labels of the snapshot.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `x86` or `arm`.
    pub architecture: String,
    /// GB.
    pub disk_size: f64,
    /// GB.
    pub image_size: f64,
    /// Operating system flavor, e.g. `debian`.
    pub os_flavor: String,
    /// Operating system version, e.g. `12`.
    pub os_version: Option<String>,
    /// Source server (id, name); it need not exist.
    pub created_from: Option<(u64, String)>,
    /// Whether deletion is refused (`protected`).
    pub delete_protected: bool,
}

impl Default for SnapshotSeed {
    fn default() -> Self {
        SnapshotSeed {
            description: "seeded snapshot".into(),
            labels: std::collections::BTreeMap::new(),
            architecture: "x86".into(),
            disk_size: 40.0,
            image_size: 1.2,
            os_flavor: "debian".into(),
            os_version: Some("12".into()),
            created_from: None,
            delete_protected: false,
        }
    }
}

/// A callback told about every request (see [`HcloudSimConfig::on_request`]).
pub type RequestObserver = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// The path without the query, e.g. `/v1/servers/10000001`.
    pub path: String,
    /// The matched template, e.g. `/servers/{id}`; `None` for an unknown route.
    pub route: Option<String>,
    /// The status sent; `None` when the connection was dropped without an answer.
    pub status: Option<u16>,
}

/// One answer kept for OpenAPI checks (see [`crate::openapi`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedResponse {
    /// HTTP method.
    pub method: String,
    /// The route template as in the OpenAPI description, e.g. `/servers/{id}/actions/shutdown`.
    pub route: String,
    /// HTTP status sent.
    pub status: u16,
    /// `None` for an answer without a body (204).
    pub body: Option<Value>,
}

/// A running simulator; dropping it stops serving.
#[derive(Debug)]
pub struct HcloudSim {
    inner: Arc<Inner>,
    address: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for HcloudSim {
    fn drop(&mut self) {
        self.acceptor.abort();
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for task in tasks {
            task.abort();
        }
    }
}

/// How long a request in manual time mode waits for due work (host calls may be slow, e.g. a
/// real sshd starting or a root filesystem being copied).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

impl HcloudSim {
    /// Binds the listen address and starts serving.
    pub async fn start(config: HcloudSimConfig) -> std::io::Result<HcloudSim> {
        let listener = TcpListener::bind(config.listen).await?;
        let address = listener.local_addr()?;
        let clock = clock::Clock::new(config.time);
        let inner = Arc::new(Inner::new(
            config.token,
            clock,
            config.durations,
            config.machines,
            world::AnswerOptions {
                record: config.record_responses,
                extra_fields: config.extra_fields,
                observer: config.on_request,
            },
            config.catalog,
            Bucket::new(
                config.rate_limit_capacity,
                config.rate_limit_refill_per_second,
            ),
        ));
        {
            let mut world = inner.world();
            world.server_limit = config.server_limit;
            world.request_log = RequestLog::new(config.limits.request_log);
        }
        let serving = Arc::clone(&inner);
        let max_body_bytes = config.limits.max_body_bytes;
        let acceptor = http::serve(listener, config.limits, move |_, request| {
            handle(Arc::clone(&serving), max_body_bytes, request)
        });
        Ok(HcloudSim {
            inner,
            address,
            acceptor,
        })
    }

    /// `http://ADDR/v1`.
    pub fn api_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The socket the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Queues a fault (see [`Fault`]); `ExhaustServerType` applies at once.
    pub fn inject(&self, fault: Fault) {
        let mut world = self.inner.world();
        if let Fault::ExhaustServerType {
            location,
            server_type,
        } = &fault
        {
            world.set_stock(server_type, location, Some(0));
            return;
        }
        world.faults.push(PendingFault { fault, seen: 0 });
    }

    /// Sets how many more servers of `server_type` `location` can take, at once and for the
    /// rest of the run: `Some(0)` sells it out (listed `available: false`, a create answers
    /// `resource_unavailable`), `None` lifts the limit. Each create takes one, each deleted
    /// server gives it back. False when the type is not offered in that location.
    pub fn set_stock(&self, server_type: &str, location: &str, stock: Option<u32>) -> bool {
        self.inner.world().set_stock(server_type, location, stock)
    }

    /// Adds an `available` snapshot at once and returns its id (see [`SnapshotSeed`]).
    pub fn add_snapshot(&self, seed: SnapshotSeed) -> u64 {
        let created = clock::rfc3339(self.inner.clock.unix_at(self.inner.clock.now()));
        let mut world = self.inner.world();
        let id = world.new_image_id();
        world.images.insert(
            id,
            world::ImageRec {
                view: Image {
                    id,
                    kind: ImageKind::Snapshot,
                    status: ImageStatus::Available,
                    name: None,
                    description: seed.description,
                    image_size: Some(seed.image_size),
                    disk_size: seed.disk_size,
                    created,
                    created_from: seed.created_from,
                    os_flavor: seed.os_flavor,
                    os_version: seed.os_version,
                    architecture: seed.architecture,
                    delete_protected: seed.delete_protected,
                    deprecated: None,
                    labels: seed.labels,
                },
                host_copy: false,
            },
        );
        id
    }

    /// Faults injected and not yet fired.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.inner
            .world()
            .faults
            .iter()
            .map(|pending| pending.fault.clone())
            .collect()
    }

    /// A snapshot of servers, images, SSH keys and actions. In [`TimeMode::Manual`], call
    /// [`HcloudSim::settle`] after [`HcloudSim::advance`] first.
    pub fn state(&self) -> SimState {
        self.inner.state()
    }

    /// Moves simulated time forward in [`TimeMode::Manual`] (no effect in scaled mode).
    pub fn advance(&self, by: Duration) {
        self.inner.clock.advance(by);
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Waits until all work due at the current simulated time has been applied; false if that
    /// took longer than two minutes of real time (a host call hangs).
    pub async fn settle(&self) -> bool {
        self.inner.clock.settle(SETTLE_LIMIT).await
    }

    /// Every request seen so far, in order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.world().request_log.to_vec()
    }

    /// Every answer so far with its body (only with `record_responses`).
    pub fn recorded_responses(&self) -> Vec<RecordedResponse> {
        self.inner.world().recorded.clone()
    }
}

fn correlation_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
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
        if !route_matches(route, method, template) {
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
        } => Injected::Fail(ApiError::new(status, &code, message)),
        Fault::DropConnection { .. } => Injected::Drop,
        Fault::DropResponse { .. } => Injected::DropAfter,
        Fault::Delay { delay, .. } => Injected::Delay(delay),
        Fault::FailAction { .. }
        | Fault::IgnoreShutdown
        | Fault::ExhaustServerType { .. }
        | Fault::SellOut { .. } => {
            return None;
        }
    })
}

/// Applies every [`Fault::SellOut`] whose moment this request is; the request is then served.
fn apply_sell_outs(inner: &Inner, method: &str, template: &str) {
    let mut world = inner.world();
    let mut fired = Vec::new();
    for (index, pending) in world.faults.iter_mut().enumerate() {
        let Fault::SellOut { route, nth, .. } = &pending.fault else {
            continue;
        };
        if !route_matches(route, method, template) {
            continue;
        }
        pending.seen += 1;
        if pending.seen >= *nth {
            fired.push(index);
        }
    }
    for index in fired.into_iter().rev() {
        if let Fault::SellOut {
            location,
            server_type,
            ..
        } = world.faults.remove(index).fault
        {
            world.set_stock(&server_type, &location, Some(0));
        }
    }
}

/// Whether a fault's `METHOD /template` names this request.
fn route_matches(route: &str, method: &str, template: &str) -> bool {
    let Some((fault_method, fault_template)) = route.split_once(' ') else {
        return false;
    };
    let fault_template = fault_template.trim();
    let fault_template = fault_template.strip_prefix("/v1").unwrap_or(fault_template);
    fault_method.eq_ignore_ascii_case(method) && fault_template == template
}

fn authorized(inner: &Inner, header: Option<&hyper::header::HeaderValue>) -> bool {
    let Some(value) = header.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // An empty configured token would otherwise accept `Bearer ` with nothing after it.
    !inner.token.is_empty() && token.trim() == inner.token
}

async fn handle(
    inner: Arc<Inner>,
    max_body_bytes: usize,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = Query::parse(request.uri().query());
    let allowed = authorized(&inner, request.headers().get(hyper::header::AUTHORIZATION));
    let Some((template, params)) = api::match_route(&method, &path) else {
        let error = ApiError::not_found("route");
        return Ok(respond(
            &inner,
            &method,
            &path,
            None,
            error.status,
            Some(error.body()),
        ));
    };
    if !allowed {
        let error = ApiError::new(401, "unauthorized", "unable to authenticate");
        return Ok(respond(
            &inner,
            &method,
            &path,
            Some(template),
            error.status,
            Some(error.body()),
        ));
    }
    if !inner.bucket().take() {
        let capacity = inner.bucket().capacity;
        let error = ApiError::new(
            429,
            "rate_limit_exceeded",
            format!("limit of {capacity} requests per hour reached"),
        );
        return Ok(respond(
            &inner,
            &method,
            &path,
            Some(template),
            error.status,
            Some(error.body()),
        ));
    }
    // The client is checked (token, rate limit) before a byte of its body is read.
    let body = match http::read_body(request, max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let error = ApiError::new(
                413,
                "invalid_input",
                format!("the request body is larger than {max_body_bytes} bytes"),
            );
            return Ok(respond(
                &inner,
                &method,
                &path,
                Some(template),
                error.status,
                Some(error.body()),
            ));
        }
        Err(BodyError::Failed) => return Err(DropConnection),
    };
    apply_sell_outs(&inner, &method, template);
    let injected = take_request_fault(&inner, &method, template);
    let (drop_after, delay) = match injected {
        Some(Injected::Fail(error)) => {
            return Ok(respond(
                &inner,
                &method,
                &path,
                Some(template),
                error.status,
                Some(error.body()),
            ));
        }
        Some(Injected::Drop) => {
            log(&inner, &method, &path, Some(template), None);
            return Err(DropConnection);
        }
        Some(Injected::DropAfter) => (true, None),
        Some(Injected::Delay(delay)) => (false, Some(delay)),
        None => (false, None),
    };
    if inner.clock.mode() == TimeMode::Manual {
        // Give up waiting rather than hang a request forever; the answer is then merely stale.
        let _ = inner.clock.settle(SETTLE_LIMIT).await;
    }
    let (status, reply_body) =
        match api::dispatch(&inner, &method, template, &params, &query, &body).await {
            Ok(reply) => (reply.status, reply.body),
            Err(error) => (error.status, Some(error.body())),
        };
    if drop_after {
        log(&inner, &method, &path, Some(template), None);
        return Err(DropConnection);
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Ok(respond(
        &inner,
        &method,
        &path,
        Some(template),
        status,
        reply_body,
    ))
}

fn log(inner: &Inner, method: &str, path: &str, template: Option<&str>, status: Option<u16>) {
    let record = RequestRecord {
        method: http::for_log(method),
        path: http::for_log(path),
        route: template.map(str::to_owned),
        status,
    };
    if let Some(observer) = &inner.observer {
        observer(&record);
    }
    inner.world().request_log.push(record);
}

fn respond(
    inner: &Inner,
    method: &str,
    path: &str,
    template: Option<&str>,
    status: u16,
    mut body: Option<Value>,
) -> Response<Full<Bytes>> {
    log(inner, method, path, template, Some(status));
    if inner.extra_fields
        && let Some(body) = body.as_mut()
    {
        world::add_extra_fields(body);
    }
    if inner.record_responses
        && let Some(template) = template
    {
        inner.world().recorded.push(RecordedResponse {
            method: method.to_owned(),
            route: template.to_owned(),
            status,
            body: body.clone(),
        });
    }
    let rate = inner.bucket().view();
    let bytes = body
        .map(|body| Bytes::from(body.to_string()))
        .unwrap_or_default();
    let mut builder = Response::builder()
        .status(status)
        .header("X-Correlation-Id", correlation_id())
        .header("RateLimit-Limit", rate.limit)
        .header("RateLimit-Remaining", rate.remaining)
        .header("RateLimit-Reset", rate.reset_unix);
    if !bytes.is_empty() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    builder
        .body(Full::new(bytes.clone()))
        .unwrap_or_else(|_| Response::new(Full::new(bytes)))
}
