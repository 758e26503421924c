//! The simulator's state and its JSON rendering: servers, images, SSH keys, actions and pending faults.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use super::catalog::{Catalog, ServerType};
use super::clock::{Clock, SimTime, rfc3339};
use super::model::{
    Action, ActionResource, ActionStatus, Image, ImageKind, ImageStatus, Server, ServerStatus,
    SimState, SshKey,
};
use super::{Durations, Fault, RecordedResponse, RequestObserver, RequestRecord};
use crate::host::MachineHost;

/// An action as stored: the public view is computed from it at the current simulated time.
#[derive(Debug, Clone)]
pub(crate) struct ActionRec {
    pub(crate) id: u64,
    pub(crate) command: String,
    pub(crate) status: ActionStatus,
    pub(crate) started: SimTime,
    /// How long the action is expected to run, for `progress`.
    pub(crate) expected: Duration,
    pub(crate) finished: Option<SimTime>,
    pub(crate) resources: Vec<(u64, &'static str)>,
    pub(crate) error: Option<(String, String)>,
    /// An error a [`Fault::FailAction`] scripted for this action.
    pub(crate) planned_error: Option<(String, String)>,
}

/// A server as stored.
#[derive(Debug, Clone)]
pub(crate) struct ServerRec {
    pub(crate) view: Server,
    /// Bumped by every power operation, so a late step of an older one does not undo a newer one.
    pub(crate) power_generation: u64,
    /// Why the host could not create the machine, if it could not.
    pub(crate) host_create_error: Option<String>,
    /// The public keys `enable_rescue` authorized for the next rescue boot.
    pub(crate) rescue_keys: Vec<String>,
}

/// An image as stored.
#[derive(Debug, Clone)]
pub(crate) struct ImageRec {
    pub(crate) view: Image,
    /// The host holds a copy of the disk for this snapshot (so deleting must tell it).
    pub(crate) host_copy: bool,
}

/// A fault waiting for its moment.
#[derive(Debug, Clone)]
pub(crate) struct PendingFault {
    pub(crate) fault: Fault,
    /// Matching requests seen since the fault was injected.
    pub(crate) seen: u32,
}

/// Everything the simulator holds, behind one lock.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) catalog: Catalog,
    pub(crate) servers: BTreeMap<u64, ServerRec>,
    pub(crate) images: BTreeMap<u64, ImageRec>,
    pub(crate) ssh_keys: BTreeMap<u64, SshKey>,
    pub(crate) actions: BTreeMap<u64, ActionRec>,
    next_server: u64,
    next_image: u64,
    next_ssh_key: u64,
    next_action: u64,
    pub(crate) faults: Vec<PendingFault>,
    /// Servers the project may have at once (`resource_limit_exceeded` beyond).
    pub(crate) server_limit: Option<u32>,
    pub(crate) request_log: crate::http::RequestLog<RequestRecord>,
    pub(crate) recorded: Vec<RecordedResponse>,
}

/// The token bucket behind the `RateLimit-*` headers, in real time (clients compare
/// `RateLimit-Reset` with their own clock).
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) capacity: u32,
    pub(crate) refill_per_second: f64,
    tokens: f64,
    last: std::time::Instant,
}

/// What the rate-limit headers say after a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateView {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset_unix: u64,
}

impl Bucket {
    pub(crate) fn new(capacity: u32, refill_per_second: f64) -> Bucket {
        Bucket {
            capacity,
            refill_per_second: if refill_per_second.is_finite() && refill_per_second > 0.0 {
                refill_per_second
            } else {
                0.0
            },
            tokens: f64::from(capacity),
            last: std::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens =
            (self.tokens + elapsed * self.refill_per_second).min(f64::from(self.capacity));
    }

    /// Takes one token if there is one; returns whether it could.
    pub(crate) fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn view(&mut self) -> RateView {
        self.refill();
        let missing = f64::from(self.capacity) - self.tokens;
        let seconds_to_full = if missing <= 0.0 {
            0.0
        } else if self.refill_per_second > 0.0 {
            missing / self.refill_per_second
        } else {
            // Never refills: report a day ahead rather than infinity.
            86_400.0
        };
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        RateView {
            limit: self.capacity,
            remaining: self.tokens.floor().max(0.0) as u32,
            reset_unix: (now_unix + seconds_to_full).ceil() as u64,
        }
    }
}

/// What to do with answers besides sending them.
#[derive(Clone)]
pub(crate) struct AnswerOptions {
    pub(crate) record: bool,
    pub(crate) extra_fields: bool,
    pub(crate) observer: Option<RequestObserver>,
}

/// The field [`Inner::extra_fields`] adds: a name no client knows, holding an object.
pub(crate) const EXTRA_FIELD: &str = "x_future_field";

/// Adds [`EXTRA_FIELD`] to every object that has an `id`, as a newer API version might.
pub(crate) fn add_extra_fields(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for member in object.values_mut() {
                add_extra_fields(member);
            }
            if object.contains_key("id") {
                object.insert(
                    EXTRA_FIELD.to_owned(),
                    json!({"added": "2027-01", "values": [1, "two", null]}),
                );
            }
        }
        Value::Array(items) => items.iter_mut().for_each(add_extra_fields),
        _ => {}
    }
}

/// The shared core of a running simulator.
pub(crate) struct Inner {
    pub(crate) token: String,
    pub(crate) clock: Arc<Clock>,
    pub(crate) durations: Durations,
    pub(crate) host: Arc<dyn MachineHost>,
    pub(crate) record_responses: bool,
    /// Add [`EXTRA_FIELD`] to every object with an `id` in answers.
    pub(crate) extra_fields: bool,
    world: Mutex<World>,
    pub(crate) bucket: Mutex<Bucket>,
    /// Serialises host calls per server (the host contract: calls for one server never overlap).
    server_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises a snapshot's copy with its deletion.
    image_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Told about every request once it is answered (or dropped).
    pub(crate) observer: Option<RequestObserver>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out: it may have been copied from a real project.
        formatter
            .debug_struct("Inner")
            .field("token", &"<redacted>")
            .field("clock", &self.clock)
            .field("durations", &self.durations)
            .field("host", &self.host)
            .field("record_responses", &self.record_responses)
            .field("extra_fields", &self.extra_fields)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State stays consistent between statements; a panicked holder does not make it unusable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    pub(crate) fn new(
        token: String,
        clock: Arc<Clock>,
        durations: Durations,
        host: Arc<dyn MachineHost>,
        answers: AnswerOptions,
        catalog: Catalog,
        bucket: Bucket,
    ) -> Inner {
        Inner {
            token,
            clock,
            durations,
            host,
            record_responses: answers.record,
            extra_fields: answers.extra_fields,
            world: Mutex::new(World::new(catalog)),
            bucket: Mutex::new(bucket),
            server_locks: Mutex::new(HashMap::new()),
            image_locks: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            observer: answers.observer,
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    pub(crate) fn bucket(&self) -> MutexGuard<'_, Bucket> {
        lock(&self.bucket)
    }

    pub(crate) fn server_lock(&self, server_id: u64) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.server_locks).entry(server_id).or_default())
    }

    pub(crate) fn image_lock(&self, image_id: u64) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.image_locks).entry(image_id).or_default())
    }

    /// Runs `work` in the background, counted as clock activity until it ends.
    pub(crate) fn spawn<F>(self: &Arc<Self>, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let activity = self.clock.activity();
        let handle = tokio::spawn(async move {
            let _activity = activity;
            work.await;
        });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle.abort_handle());
    }

    pub(crate) fn state(&self) -> SimState {
        let now = self.clock.now();
        let world = self.world();
        SimState {
            servers: world
                .servers
                .values()
                .map(|server| server.view.clone())
                .collect(),
            images: world
                .images
                .values()
                .map(|image| image.view.clone())
                .collect(),
            ssh_keys: world.ssh_keys.values().cloned().collect(),
            actions: world
                .actions
                .values()
                .map(|action| action_view(action, now, &self.clock))
                .collect(),
        }
    }
}

fn progress(action: &ActionRec, now: SimTime) -> u8 {
    match action.status {
        ActionStatus::Success => 100,
        ActionStatus::Running | ActionStatus::Error => {
            let end = action.finished.unwrap_or(now);
            let elapsed = end.saturating_sub(action.started).as_secs_f64();
            let expected = action.expected.as_secs_f64();
            if expected <= 0.0 {
                return 99;
            }
            // A running action never claims 100 %: that is what `success` says.
            ((elapsed / expected) * 100.0).floor().clamp(0.0, 99.0) as u8
        }
    }
}

pub(crate) fn action_view(action: &ActionRec, now: SimTime, clock: &Clock) -> Action {
    Action {
        id: action.id,
        command: action.command.clone(),
        status: action.status,
        progress: progress(action, now),
        started: rfc3339(clock.unix_at(action.started)),
        finished: action.finished.map(|at| rfc3339(clock.unix_at(at))),
        resources: action
            .resources
            .iter()
            .map(|(id, kind)| ActionResource {
                id: *id,
                kind: (*kind).to_owned(),
            })
            .collect(),
        error: action.error.clone(),
    }
}

pub(crate) fn action_json(action: &ActionRec, now: SimTime, clock: &Clock) -> Value {
    let view = action_view(action, now, clock);
    json!({
        "id": view.id,
        "command": view.command,
        "status": view.status.as_str(),
        "progress": view.progress,
        "started": view.started,
        "finished": view.finished,
        "resources": view.resources.iter().map(|resource| json!({"id": resource.id, "type": resource.kind})).collect::<Vec<_>>(),
        "error": view.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
    })
}

pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    json!(labels)
}

/// A GB figure as the API sends it: two decimals.
fn gigabytes(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub(crate) fn image_json(image: &Image) -> Value {
    json!({
        "id": image.id,
        "type": image.kind.as_str(),
        "status": image.status.as_str(),
        "name": image.name,
        "description": image.description,
        "image_size": image.image_size.map(gigabytes),
        "disk_size": image.disk_size,
        "created": image.created,
        "created_from": image.created_from.as_ref().map(|(id, name)| json!({"id": id, "name": name})),
        "bound_to": Value::Null,
        "os_flavor": image.os_flavor,
        "os_version": image.os_version,
        "architecture": image.architecture,
        "rapid_deploy": image.kind == ImageKind::System,
        "protection": {"delete": image.delete_protected},
        "deprecated": image.deprecated,
        "deleted": Value::Null,
        "labels": labels_json(&image.labels),
    })
}

pub(crate) fn ssh_key_json(key: &SshKey) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "fingerprint": key.fingerprint,
        "public_key": key.public_key,
        "labels": labels_json(&key.labels),
        "created": key.created,
    })
}

impl World {
    fn new(catalog: Catalog) -> World {
        let mut images = BTreeMap::new();
        for system in &catalog.system_images {
            images.insert(
                system.id,
                ImageRec {
                    view: Image {
                        id: system.id,
                        kind: ImageKind::System,
                        status: ImageStatus::Available,
                        name: Some(system.name.clone()),
                        description: system.description.clone(),
                        image_size: None,
                        disk_size: system.disk_size,
                        created: system.created.clone(),
                        created_from: None,
                        os_flavor: system.os_flavor.clone(),
                        os_version: Some(system.os_version.clone()),
                        architecture: system.architecture.clone(),
                        delete_protected: false,
                        deprecated: system.deprecated.clone(),
                        labels: BTreeMap::new(),
                    },
                    host_copy: false,
                },
            );
        }
        World {
            catalog,
            servers: BTreeMap::new(),
            images,
            ssh_keys: BTreeMap::new(),
            actions: BTreeMap::new(),
            // Distinct id ranges per resource kind, so a client mixing ids up gets a 404.
            next_server: 10_000_001,
            next_image: 300_000_001,
            next_ssh_key: 20_000_001,
            next_action: 1_000_000_001,
            faults: Vec::new(),
            server_limit: None,
            request_log: crate::http::RequestLog::new(crate::http::Limits::default().request_log),
            recorded: Vec::new(),
        }
    }

    pub(crate) fn new_server_id(&mut self) -> u64 {
        let id = self.next_server;
        self.next_server += 1;
        id
    }

    pub(crate) fn new_image_id(&mut self) -> u64 {
        let id = self.next_image;
        self.next_image += 1;
        id
    }

    pub(crate) fn new_ssh_key_id(&mut self) -> u64 {
        let id = self.next_ssh_key;
        self.next_ssh_key += 1;
        id
    }

    /// Starts an action; a pending [`Fault::FailAction`] for `command` is consumed into it.
    pub(crate) fn start_action(
        &mut self,
        command: &str,
        resources: Vec<(u64, &'static str)>,
        started: SimTime,
        expected: Duration,
    ) -> u64 {
        let id = self.next_action;
        self.next_action += 1;
        let planned_error = self.take_action_fault(command);
        self.actions.insert(
            id,
            ActionRec {
                id,
                command: command.to_owned(),
                status: ActionStatus::Running,
                started,
                expected,
                finished: None,
                resources,
                error: None,
                planned_error,
            },
        );
        id
    }

    /// Consumes a pending [`Fault::IgnoreShutdown`], if there is one.
    pub(crate) fn take_ignore_shutdown(&mut self) -> bool {
        let Some(position) = self
            .faults
            .iter()
            .position(|pending| matches!(pending.fault, Fault::IgnoreShutdown))
        else {
            return false;
        };
        self.faults.remove(position);
        true
    }

    fn take_action_fault(&mut self, command: &str) -> Option<(String, String)> {
        let position = self.faults.iter().position(|pending| {
            matches!(&pending.fault, Fault::FailAction { command: wanted, .. } if wanted == command)
        })?;
        match self.faults.remove(position).fault {
            Fault::FailAction { code, message, .. } => Some((code, message)),
            _ => None,
        }
    }

    /// Ends an action now, with success or with `(code, message)`.
    pub(crate) fn finish_action(
        &mut self,
        id: u64,
        now: SimTime,
        outcome: Result<(), (String, String)>,
    ) {
        if let Some(action) = self.actions.get_mut(&id)
            && action.status == ActionStatus::Running
        {
            action.finished = Some(now);
            match outcome {
                Ok(()) => action.status = ActionStatus::Success,
                Err(error) => {
                    action.status = ActionStatus::Error;
                    action.error = Some(error);
                }
            }
        }
    }

    /// The planned error of an action, if a fault scripted one.
    pub(crate) fn planned_error(&self, id: u64) -> Option<(String, String)> {
        self.actions
            .get(&id)
            .and_then(|action| action.planned_error.clone())
    }

    /// True when an action is running on this server (then mutating calls answer `locked`).
    pub(crate) fn server_busy(&self, server_id: u64) -> bool {
        self.actions.values().any(|action| {
            action.status == ActionStatus::Running
                && action
                    .resources
                    .iter()
                    .any(|(id, kind)| *id == server_id && *kind == "server")
        })
    }

    fn type_location(
        &mut self,
        server_type: &str,
        location: &str,
    ) -> Option<&mut super::catalog::TypeLocation> {
        self.catalog
            .server_types
            .iter_mut()
            .find(|candidate| candidate.name == server_type)?
            .locations
            .iter_mut()
            .find(|place| place.location == location)
    }

    /// A new server takes one of its type from the location's stock.
    pub(crate) fn take_stock(&mut self, server_type: &str, location: &str) {
        if let Some(place) = self.type_location(server_type, location)
            && let Some(stock) = place.stock.as_mut()
        {
            *stock = stock.saturating_sub(1);
        }
    }

    /// A deleted server gives its place back to the location's stock.
    pub(crate) fn return_stock(&mut self, server_type: &str, location: &str) {
        if let Some(place) = self.type_location(server_type, location)
            && let Some(stock) = place.stock.as_mut()
        {
            *stock = stock.saturating_add(1);
        }
    }

    /// Sets how many more servers of a type a location can take (`None`: no limit); the listing
    /// follows (`available` is false at zero). False when the type is not offered there.
    pub(crate) fn set_stock(
        &mut self,
        server_type: &str,
        location: &str,
        stock: Option<u32>,
    ) -> bool {
        let Some(place) = self.type_location(server_type, location) else {
            return false;
        };
        place.stock = stock;
        place.available = stock != Some(0);
        if !place.available {
            place.recommended = false;
        }
        true
    }

    pub(crate) fn server_type(&self, name: &str) -> Option<&ServerType> {
        self.catalog
            .server_types
            .iter()
            .find(|server_type| server_type.name == name)
    }

    pub(crate) fn set_status(&mut self, server_id: u64, status: ServerStatus) {
        if let Some(server) = self.servers.get_mut(&server_id) {
            server.view.status = status;
        }
    }

    pub(crate) fn server_json(&self, server: &ServerRec) -> Value {
        let view = &server.view;
        let server_type = self
            .server_type(&view.server_type)
            .map_or(Value::Null, |server_type| {
                server_type.to_json(&self.catalog)
            });
        let location = self
            .catalog
            .locations
            .iter()
            .find(|location| location.name == view.location)
            .map_or(Value::Null, |location| location.to_json());
        let image = view
            .image_id
            .and_then(|id| self.images.get(&id))
            .map_or(Value::Null, |image| image_json(&image.view));
        let ipv4 = match (view.ipv4_enabled, view.ipv4) {
            (true, Some(address)) => json!({
                "id": view.id + 90_000_000,
                "ip": address.to_string(),
                "blocked": false,
                "dns_ptr": reverse_dns(address),
            }),
            _ => Value::Null,
        };
        let ipv6 = if view.ipv6_enabled {
            json!({
                "id": view.id + 91_000_000,
                "ip": ipv6_network(view.id),
                "blocked": false,
                "dns_ptr": [],
            })
        } else {
            Value::Null
        };
        json!({
            "id": view.id,
            "name": view.name,
            "status": view.status.as_str(),
            "created": view.created,
            "public_net": {
                "ipv4": ipv4,
                "ipv6": ipv6,
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": server_type,
            "location": location,
            "image": image,
            "iso": Value::Null,
            "rescue_enabled": view.rescue_enabled,
            "locked": false,
            "backup_window": Value::Null,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21_990_232_555_520u64,
            "protection": {"delete": view.delete_protected, "rebuild": view.rebuild_protected},
            "labels": labels_json(&view.labels),
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": view.primary_disk_size,
            "placement_group": Value::Null,
        })
    }
}

fn reverse_dns(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("static.{d}.{c}.{b}.{a}.clients.your-server.de")
}

/// A documentation-prefix /64 per server (2001:db8::/32 is reserved for examples).
pub(crate) fn ipv6_network(server_id: u64) -> String {
    format!(
        "2001:db8:{:x}:{:x}::/64",
        (server_id >> 16) & 0xffff,
        server_id & 0xffff
    )
}
