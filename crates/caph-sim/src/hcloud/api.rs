//! Routes and handlers: the endpoints of the reference with their checks, status codes and wrappers.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};

use super::catalog::ServerType;
use super::checks;
use super::clock::rfc3339;
use super::error::ApiError;
use super::model::{Image, ImageKind, ImageStatus, Server, ServerStatus, SshKey};
use super::ops;
use super::query::{self, Query};
use super::world::{ImageRec, Inner, ServerRec, World, action_json, image_json, ssh_key_json};
use crate::host::{CloudInit, DiskSource, MachineSpec};

/// Every route the simulator answers, as `(method, template)`; literal segments before placeholders.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/servers"),
    ("POST", "/servers"),
    ("GET", "/servers/{id}"),
    ("PUT", "/servers/{id}"),
    ("DELETE", "/servers/{id}"),
    ("GET", "/servers/{id}/actions"),
    ("POST", "/servers/{id}/actions/shutdown"),
    ("POST", "/servers/{id}/actions/poweroff"),
    ("POST", "/servers/{id}/actions/poweron"),
    ("POST", "/servers/{id}/actions/reset"),
    ("POST", "/servers/{id}/actions/reboot"),
    ("POST", "/servers/{id}/actions/enable_rescue"),
    ("POST", "/servers/{id}/actions/disable_rescue"),
    ("POST", "/servers/{id}/actions/create_image"),
    ("POST", "/servers/{id}/actions/change_protection"),
    ("GET", "/servers/{id}/actions/{action_id}"),
    ("GET", "/actions"),
    ("GET", "/actions/{id}"),
    ("GET", "/images"),
    ("GET", "/images/{id}"),
    ("PUT", "/images/{id}"),
    ("DELETE", "/images/{id}"),
    ("POST", "/images/{id}/actions/change_protection"),
    ("GET", "/ssh_keys"),
    ("POST", "/ssh_keys"),
    ("GET", "/ssh_keys/{id}"),
    ("PUT", "/ssh_keys/{id}"),
    ("DELETE", "/ssh_keys/{id}"),
    ("GET", "/server_types"),
    ("GET", "/server_types/{id}"),
    ("GET", "/locations"),
    ("GET", "/locations/{id}"),
];

/// The route templates the simulator answers, as `METHOD /template` (for fault scripts and docs).
pub fn routes() -> impl Iterator<Item = String> {
    ROUTES
        .iter()
        .map(|(method, template)| format!("{method} {template}"))
}

/// Finds the template for a path below `/v1`, with the placeholder values in order.
pub(crate) fn match_route(method: &str, path: &str) -> Option<(&'static str, Vec<String>)> {
    let rest = path.strip_prefix("/v1")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    'routes: for (route_method, template) in ROUTES {
        if *route_method != method {
            continue;
        }
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        for (part, segment) in parts.iter().zip(&segments) {
            if part.starts_with('{') {
                if segment.is_empty() {
                    continue 'routes;
                }
                params.push((*segment).to_owned());
            } else if part != segment {
                continue 'routes;
            }
        }
        return Some((template, params));
    }
    None
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Option<Value>,
}

fn ok(body: Value) -> Result<Reply, ApiError> {
    Ok(Reply {
        status: 200,
        body: Some(body),
    })
}

fn created(body: Value) -> Result<Reply, ApiError> {
    Ok(Reply {
        status: 201,
        body: Some(body),
    })
}

fn no_content() -> Result<Reply, ApiError> {
    Ok(Reply {
        status: 204,
        body: None,
    })
}

fn id_param(params: &[String], index: usize) -> Result<u64, ApiError> {
    let raw = params.get(index).map(String::as_str).unwrap_or_default();
    raw.parse::<u64>()
        .map_err(|_| ApiError::invalid_field("id", format!("'{raw}' is not a valid ID")))
}

/// Parses a JSON object body; an absent body is an empty object where `required` is false.
fn object_body(body: &[u8], required: bool) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if required {
            return Err(ApiError::json_error("the request body is empty"));
        }
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        // Some clients send `null` for "no parameters".
        Ok(Value::Null) if !required => Ok(Map::new()),
        Ok(_) => Err(ApiError::json_error("expected a JSON object")),
        Err(error) => Err(ApiError::json_error(error)),
    }
}

const MISSING: &str = "Missing data for required field.";

fn string_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::invalid_field(name, "Not a valid string.")),
    }
}

fn required_string(body: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    string_field(body, name)?.ok_or_else(|| ApiError::invalid_field(name, MISSING))
}

fn bool_field(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(ApiError::invalid_field(name, "Not a valid boolean.")),
    }
}

/// An "ID or name" reference.
#[derive(Debug, Clone)]
enum Ref {
    Id(u64),
    Name(String),
}

impl std::fmt::Display for Ref {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Id(id) => write!(formatter, "{id}"),
            Ref::Name(name) => write!(formatter, "{name}"),
        }
    }
}

fn reference(value: &Value, field: &str) -> Result<Ref, ApiError> {
    match value {
        Value::Number(number) => number
            .as_u64()
            .map(Ref::Id)
            .ok_or_else(|| ApiError::invalid_field(field, "Not a valid ID.")),
        Value::String(text) if !text.is_empty() => Ok(Ref::Name(text.clone())),
        _ => Err(ApiError::invalid_field(field, "Not a valid ID or name.")),
    }
}

fn ref_field(body: &Map<String, Value>, name: &str) -> Result<Option<Ref>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => reference(value, name).map(Some),
    }
}

fn random_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

/// Serves one matched request.
pub(crate) async fn dispatch(
    inner: &Arc<Inner>,
    method: &str,
    template: &str,
    params: &[String],
    query: &Query,
    body: &[u8],
) -> Result<Reply, ApiError> {
    match (method, template) {
        ("GET", "/servers") => list_servers(inner, query),
        ("POST", "/servers") => create_server(inner, body).await,
        ("GET", "/servers/{id}") => get_server(inner, id_param(params, 0)?),
        ("PUT", "/servers/{id}") => update_server(inner, id_param(params, 0)?, body),
        ("DELETE", "/servers/{id}") => delete_server(inner, id_param(params, 0)?),
        ("GET", "/servers/{id}/actions") => server_actions(inner, id_param(params, 0)?, query),
        ("GET", "/servers/{id}/actions/{action_id}") => {
            get_server_action(inner, id_param(params, 0)?, id_param(params, 1)?)
        }
        ("GET", "/actions") => list_actions(inner, query),
        ("GET", "/actions/{id}") => get_action(inner, id_param(params, 0)?),
        ("GET", "/images") => list_images(inner, query),
        ("GET", "/images/{id}") => get_image(inner, id_param(params, 0)?),
        ("PUT", "/images/{id}") => update_image(inner, id_param(params, 0)?, body),
        ("DELETE", "/images/{id}") => delete_image(inner, id_param(params, 0)?).await,
        ("POST", "/images/{id}/actions/change_protection") => {
            image_protection(inner, id_param(params, 0)?, body)
        }
        ("GET", "/ssh_keys") => list_ssh_keys(inner, query),
        ("POST", "/ssh_keys") => create_ssh_key(inner, body),
        ("GET", "/ssh_keys/{id}") => get_ssh_key(inner, id_param(params, 0)?),
        ("PUT", "/ssh_keys/{id}") => update_ssh_key(inner, id_param(params, 0)?, body),
        ("DELETE", "/ssh_keys/{id}") => delete_ssh_key(inner, id_param(params, 0)?),
        ("GET", "/server_types") => list_server_types(inner, query),
        ("GET", "/server_types/{id}") => get_server_type(inner, id_param(params, 0)?),
        ("GET", "/locations") => list_locations(inner, query),
        ("GET", "/locations/{id}") => get_location(inner, id_param(params, 0)?),
        ("POST", action_route) => {
            let command = action_route.rsplit('/').next().unwrap_or_default();
            server_action(inner, id_param(params, 0)?, command, body)
        }
        _ => Err(ApiError::not_found("route")),
    }
}

// ---- servers ----

fn list_servers(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let mut items: Vec<Value> = {
        let world = inner.world();
        world
            .servers
            .values()
            .map(|server| world.server_json(server))
            .collect()
    };
    query::filter_by_field(&mut items, query, "name", "name", None)?;
    query::filter_by_field(
        &mut items,
        query,
        "status",
        "status",
        Some(&[
            "initializing",
            "starting",
            "running",
            "stopping",
            "off",
            "deleting",
            "migrating",
            "rebuilding",
            "unknown",
        ]),
    )?;
    query::filter_by_selector(&mut items, query)?;
    query::sort(&mut items, query, &["id", "name", "created"])?;
    ok(query::paginate("servers", items, query)?)
}

fn get_server(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let world = inner.world();
    let server = world
        .servers
        .get(&id)
        .ok_or_else(|| ApiError::not_found("server"))?;
    ok(json!({"server": world.server_json(server)}))
}

fn update_server(inner: &Inner, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let name = string_field(&body, "name")?;
    let labels = checks::labels(body.get("labels"))?;
    let mut world = inner.world();
    if !world.servers.contains_key(&id) {
        return Err(ApiError::not_found("server"));
    }
    if let Some(name) = &name {
        if let Some(problem) = checks::hostname_problem(name) {
            return Err(ApiError::invalid_field(
                "name",
                format!("must be a valid hostname (RFC 1123): {problem}"),
            ));
        }
        if world
            .servers
            .values()
            .any(|server| server.view.id != id && &server.view.name == name)
        {
            return Err(ApiError::uniqueness("name", "server name is already used"));
        }
    }
    let server = world
        .servers
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("server"))?;
    if let Some(name) = name {
        server.view.name = name;
    }
    if let Some(labels) = labels {
        server.view.labels = labels;
    }
    let server = world
        .servers
        .get(&id)
        .ok_or_else(|| ApiError::not_found("server"))?;
    ok(json!({"server": world.server_json(server)}))
}

/// The largest `user_data` the service accepts.
const MAX_USER_DATA: usize = 32 * 1024;

/// What a create request resolved to, before the machine exists.
struct NewServer {
    server_id: u64,
    create_action: u64,
    start_action: Option<u64>,
    spec: MachineSpec,
    root_password: Option<String>,
}

fn resolve_server_type<'w>(world: &'w World, wanted: &Ref) -> Result<&'w ServerType, ApiError> {
    world
        .catalog
        .server_types
        .iter()
        .find(|server_type| match wanted {
            Ref::Id(id) => server_type.id == *id,
            Ref::Name(name) => &server_type.name == name,
        })
        .ok_or_else(|| {
            ApiError::invalid_field("server_type", format!("server type {wanted} not found"))
        })
}

fn resolve_image(world: &World, wanted: &Ref, architecture: &str) -> Result<Image, ApiError> {
    let candidates: Vec<&Image> = world
        .images
        .values()
        .map(|image| &image.view)
        .filter(|image| match wanted {
            Ref::Id(id) => image.id == *id,
            Ref::Name(name) => image.name.as_deref() == Some(name.as_str()),
        })
        .collect();
    let Some(first) = candidates.first() else {
        return Err(ApiError::invalid_field(
            "image",
            format!("image {wanted} not found"),
        ));
    };
    // A system image name stands for one image per architecture: take the one that fits.
    let image = candidates
        .iter()
        .find(|image| image.architecture == architecture)
        .unwrap_or(first);
    Ok((*image).clone())
}

fn create_server_checks(
    inner: &Inner,
    body: &Map<String, Value>,
) -> Result<(NewServer, Value, Vec<Value>), ApiError> {
    if body.contains_key("datacenter") {
        return Err(ApiError::invalid_field(
            "datacenter",
            "datacenter was removed from the API: use location",
        ));
    }
    let name = required_string(body, "name")?;
    if let Some(problem) = checks::hostname_problem(&name) {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be a valid hostname (RFC 1123): {problem}"),
        ));
    }
    let type_ref = ref_field(body, "server_type")?
        .ok_or_else(|| ApiError::invalid_field("server_type", MISSING))?;
    let image_ref =
        ref_field(body, "image")?.ok_or_else(|| ApiError::invalid_field("image", MISSING))?;
    let location_ref = ref_field(body, "location")?;
    let key_refs: Vec<Ref> = match body.get("ssh_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| reference(item, "ssh_keys"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid_field("ssh_keys", "Not a valid list.")),
    };
    let user_data = string_field(body, "user_data")?;
    if user_data
        .as_ref()
        .is_some_and(|data| data.len() > MAX_USER_DATA)
    {
        return Err(ApiError::invalid_field(
            "user_data",
            "user_data must not be longer than 32 KiB",
        ));
    }
    let labels = checks::labels(body.get("labels"))?.unwrap_or_default();
    let start_after_create = bool_field(body, "start_after_create")?.unwrap_or(true);
    let (enable_ipv4, enable_ipv6) = match body.get("public_net") {
        None | Some(Value::Null) => (true, true),
        Some(Value::Object(public_net)) => (
            bool_field(public_net, "enable_ipv4")?.unwrap_or(true),
            bool_field(public_net, "enable_ipv6")?.unwrap_or(true),
        ),
        Some(_) => return Err(ApiError::invalid_field("public_net", "Not a valid object.")),
    };

    let now = inner.clock.now();
    let now_text = rfc3339(inner.clock.unix_at(now));
    let mut world = inner.world();
    if world
        .servers
        .values()
        .any(|server| server.view.name == name)
    {
        return Err(ApiError::uniqueness("name", "server name is already used"));
    }
    if let Some(limit) = world.server_limit
        && world.servers.len() >= limit as usize
    {
        let mut error = ApiError::new(
            403,
            "resource_limit_exceeded",
            format!("server limit of {limit} exceeded"),
        );
        error.details = json!({"limits": [{"name": "server_limit"}]});
        return Err(error);
    }
    let server_type = resolve_server_type(&world, &type_ref)?.clone();
    let retired = |deprecation: &Option<super::catalog::Deprecation>| {
        deprecation
            .as_ref()
            .is_some_and(|deprecation| deprecation.unavailable_after <= now_text)
    };
    if retired(&server_type.deprecation) {
        return Err(ApiError::invalid_field(
            "server_type",
            format!(
                "server type {} is deprecated and can no longer be ordered",
                server_type.name
            ),
        ));
    }
    let location = match &location_ref {
        Some(wanted) => world
            .catalog
            .locations
            .iter()
            .find(|location| match wanted {
                Ref::Id(id) => location.id == *id,
                Ref::Name(name) => &location.name == name,
            })
            .map(|location| location.name.clone())
            .ok_or_else(|| {
                ApiError::invalid_field("location", format!("location {wanted} not found"))
            })?,
        None => server_type
            .locations
            .iter()
            .find(|place| place.orderable() && !retired(&place.deprecation))
            .or(server_type.locations.first())
            .map(|place| place.location.clone())
            .unwrap_or_default(),
    };
    let Some(place) = server_type
        .locations
        .iter()
        .find(|place| place.location == location)
    else {
        return Err(ApiError::invalid_field(
            "location",
            format!(
                "unsupported location for server type: {} is not offered in {location}",
                server_type.name
            ),
        ));
    };
    if retired(&place.deprecation) {
        return Err(ApiError::invalid_field(
            "server_type",
            format!(
                "server type {} is deprecated in {location} and can no longer be ordered",
                server_type.name
            ),
        ));
    }
    if !place.orderable() {
        // The live service's answer when a location has run out of a type.
        let mut error = ApiError::new(412, "resource_unavailable", "error during placement");
        error.details = json!({});
        return Err(error);
    }
    let image = resolve_image(&world, &image_ref, &server_type.architecture)?;
    if image.status != ImageStatus::Available {
        return Err(ApiError::invalid_field(
            "image",
            format!("image {} is not available yet", image.id),
        ));
    }
    if image.architecture != server_type.architecture {
        return Err(ApiError::invalid_with_message(
            "image",
            "image has incompatible architecture",
        ));
    }
    if image.disk_size > server_type.disk as f64 {
        return Err(ApiError::invalid_with_message(
            "image",
            "image disk is bigger than server type disk",
        ));
    }
    let mut keys: Vec<SshKey> = Vec::new();
    for wanted in &key_refs {
        let key = world
            .ssh_keys
            .values()
            .find(|key| match wanted {
                Ref::Id(id) => key.id == *id,
                Ref::Name(name) => &key.name == name,
            })
            .ok_or_else(|| {
                ApiError::invalid_field("ssh_keys", format!("SSH key {wanted} not found"))
            })?;
        if !keys.iter().any(|known| known.id == key.id) {
            keys.push(key.clone());
        }
    }

    world.take_stock(&server_type.name, &location);
    let server_id = world.new_server_id();
    let create_expected = inner.durations.create;
    let create_action = world.start_action(
        "create_server",
        vec![(server_id, "server")],
        now,
        create_expected,
    );
    let start_action = start_after_create.then(|| {
        world.start_action(
            "start_server",
            vec![(server_id, "server")],
            now,
            create_expected.saturating_add(inner.durations.start),
        )
    });
    let root_password = keys.is_empty().then(random_password);
    let disk = match image.kind {
        ImageKind::System => DiskSource::System {
            name: image.name.clone().unwrap_or_default(),
            architecture: image.architecture.clone(),
        },
        ImageKind::Snapshot => DiskSource::Snapshot { image_id: image.id },
    };
    let spec = MachineSpec {
        server_id,
        hostname: name.clone(),
        disk,
        authorized_keys: keys.iter().map(|key| key.public_key.clone()).collect(),
        user_data: user_data.clone(),
        cloud_init: CloudInit::UserData,
    };
    world.servers.insert(
        server_id,
        ServerRec {
            view: Server {
                id: server_id,
                name,
                status: ServerStatus::Initializing,
                server_type: server_type.name.clone(),
                architecture: server_type.architecture.clone(),
                location,
                image_id: Some(image.id),
                labels,
                ipv4: None,
                ipv4_enabled: enable_ipv4,
                ipv6_enabled: enable_ipv6,
                rescue_enabled: false,
                ssh_key_ids: keys.iter().map(|key| key.id).collect(),
                user_data,
                primary_disk_size: server_type.disk,
                created: now_text,
                delete_protected: false,
                rebuild_protected: false,
            },
            power_generation: 0,
            host_create_error: None,
            rescue_keys: Vec::new(),
        },
    );
    let action = world
        .actions
        .get(&create_action)
        .map(|action| action_json(action, now, &inner.clock))
        .unwrap_or(Value::Null);
    let next_actions = start_action
        .and_then(|id| world.actions.get(&id))
        .map(|action| vec![action_json(action, now, &inner.clock)])
        .unwrap_or_default();
    Ok((
        NewServer {
            server_id,
            create_action,
            start_action,
            spec,
            root_password,
        },
        action,
        next_actions,
    ))
}

async fn create_server(inner: &Arc<Inner>, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let (new, action, next_actions) = create_server_checks(inner, &body)?;
    let server_id = new.server_id;
    let (create_action, start_action) = (new.create_action, new.start_action);
    // The machine is made in a task of its own: a client hanging up mid-request must not leave
    // a server that never leaves `initializing` (the real service carries on too).
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let task_inner = Arc::clone(inner);
    inner.spawn(async move {
        let outcome = {
            let lock = task_inner.server_lock(server_id);
            let _guard = lock.lock().await;
            task_inner.host.create(new.spec).await
        };
        let (server, started) = {
            let mut world = task_inner.world();
            if let Some(server) = world.servers.get_mut(&server_id) {
                match outcome {
                    Ok(machine) => server.view.ipv4 = Some(machine.ipv4),
                    Err(error) => server.host_create_error = Some(error.to_string()),
                }
            }
            let server = world
                .servers
                .get(&server_id)
                .map(|server| world.server_json(server))
                .unwrap_or(Value::Null);
            let started = world
                .actions
                .get(&create_action)
                .map_or(Duration::ZERO, |action| action.started);
            (server, started)
        };
        // The answer goes out before the flow starts, so it shows the server as just created.
        let _ = sender.send(server);
        task_inner.spawn(ops::create_server(
            Arc::clone(&task_inner),
            server_id,
            create_action,
            start_action,
            started,
        ));
    });
    let server = receiver.await.unwrap_or(Value::Null);
    created(json!({
        "server": server,
        "action": action,
        "next_actions": next_actions,
        "root_password": new.root_password,
    }))
}

fn delete_server(inner: &Arc<Inner>, id: u64) -> Result<Reply, ApiError> {
    let now = inner.clock.now();
    let mut world = inner.world();
    let server = world
        .servers
        .get(&id)
        .ok_or_else(|| ApiError::not_found("server"))?;
    if server.view.status == ServerStatus::Deleting {
        return Err(ApiError::locked());
    }
    if server.view.delete_protected {
        return Err(ApiError::new(
            423,
            "protected",
            "server is protected against deletion",
        ));
    }
    let previous = server.view.status;
    let action_id = world.start_action(
        "delete_server",
        vec![(id, "server")],
        now,
        inner.durations.delete,
    );
    if let Some(server) = world.servers.get_mut(&id) {
        server.view.status = ServerStatus::Deleting;
        server.power_generation += 1;
    }
    let action = world
        .actions
        .get(&action_id)
        .map(|action| action_json(action, now, &inner.clock));
    drop(world);
    inner.spawn(ops::delete_server(
        Arc::clone(inner),
        id,
        action_id,
        now,
        previous,
    ));
    ok(json!({"action": action}))
}

/// A background flow, boxed so that different flows fit one variable.
type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn boxed(flow: impl Future<Output = ()> + Send + 'static) -> Task {
    Box::pin(flow)
}

fn server_action(
    inner: &Arc<Inner>,
    id: u64,
    command: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let body = object_body(body, false)?;
    let now = inner.clock.now();
    let durations = inner.durations.clone();
    let mut world = inner.world();
    let server = world
        .servers
        .get(&id)
        .ok_or_else(|| ApiError::not_found("server"))?;
    if server.view.status == ServerStatus::Deleting || world.server_busy(id) {
        return Err(ApiError::locked());
    }
    let previous = server.view.status;
    let server_name = server.view.name.clone();
    let resources = vec![(id, "server")];
    let mut extra = Map::new();
    // Spawned only once the answer is rendered, so it shows the action as it started.
    let task: Task;
    let action_id = match command {
        "shutdown" | "poweroff" | "poweron" | "reset" | "reboot" => {
            let (wire_command, expected) = match command {
                "shutdown" => ("shutdown_server", durations.shutdown_signal),
                "poweroff" => ("stop_server", durations.poweroff),
                "poweron" => ("start_server", durations.poweron),
                "reset" => ("reset_server", durations.reset),
                _ => ("reboot_server", durations.reset),
            };
            let action_id = world.start_action(wire_command, resources, now, expected);
            let generation = world.servers.get_mut(&id).map_or(0, |server| {
                server.power_generation += 1;
                server.power_generation
            });
            let was_running = previous == ServerStatus::Running;
            let ignored = command == "shutdown" && was_running && world.take_ignore_shutdown();
            let next = match command {
                "shutdown" if ignored => previous,
                "shutdown" | "poweroff" if was_running => ServerStatus::Stopping,
                "poweron" if !was_running => ServerStatus::Starting,
                "reset" | "reboot" if !was_running => ServerStatus::Starting,
                _ => previous,
            };
            world.set_status(id, next);
            let task_inner = Arc::clone(inner);
            task = match command {
                "shutdown" => boxed(ops::shutdown(
                    task_inner, id, action_id, generation, now, previous, ignored,
                )),
                "poweroff" => boxed(ops::power_off(
                    task_inner, id, action_id, generation, now, previous,
                )),
                "poweron" => boxed(ops::power_on(
                    task_inner, id, action_id, generation, now, previous,
                )),
                _ => boxed(ops::reset(
                    task_inner,
                    id,
                    action_id,
                    generation,
                    now,
                    was_running,
                )),
            };
            action_id
        }
        "enable_rescue" => {
            let rescue_type = string_field(&body, "type")?.unwrap_or_else(|| "linux64".into());
            if rescue_type != "linux64" {
                return Err(ApiError::invalid_field(
                    "type",
                    format!("'{rescue_type}' is not one of linux64"),
                ));
            }
            let mut rescue_keys = Vec::new();
            if let Some(keys) = body.get("ssh_keys")
                && !keys.is_null()
            {
                let Some(keys) = keys.as_array() else {
                    return Err(ApiError::invalid_field("ssh_keys", "Not a valid list."));
                };
                for key in keys {
                    let Some(key_id) = key.as_u64() else {
                        return Err(ApiError::invalid_field("ssh_keys", "Not a valid ID."));
                    };
                    match world.ssh_keys.get(&key_id) {
                        Some(known) => rescue_keys.push(known.public_key.clone()),
                        None => {
                            return Err(ApiError::invalid_field(
                                "ssh_keys",
                                format!("SSH key {key_id} not found"),
                            ));
                        }
                    }
                }
            }
            let action_id = world.start_action("enable_rescue", resources, now, durations.rescue);
            extra.insert("root_password".into(), json!(random_password()));
            task = boxed(ops::timed(
                Arc::clone(inner),
                action_id,
                now.saturating_add(durations.rescue),
                Box::new(move |world: &mut World| {
                    if let Some(server) = world.servers.get_mut(&id) {
                        server.view.rescue_enabled = true;
                        server.rescue_keys = rescue_keys;
                    }
                }),
            ));
            action_id
        }
        "disable_rescue" => {
            let action_id = world.start_action("disable_rescue", resources, now, durations.rescue);
            task = boxed(ops::timed(
                Arc::clone(inner),
                action_id,
                now.saturating_add(durations.rescue),
                Box::new(move |world: &mut World| {
                    if let Some(server) = world.servers.get_mut(&id) {
                        server.view.rescue_enabled = false;
                    }
                }),
            ));
            action_id
        }
        "change_protection" => {
            let delete = bool_field(&body, "delete")?;
            let rebuild = bool_field(&body, "rebuild")?;
            let action_id = world.start_action(
                "change_protection",
                resources,
                now,
                durations.change_protection,
            );
            task = boxed(ops::timed(
                Arc::clone(inner),
                action_id,
                now.saturating_add(durations.change_protection),
                Box::new(move |world: &mut World| {
                    if let Some(server) = world.servers.get_mut(&id) {
                        if let Some(delete) = delete {
                            server.view.delete_protected = delete;
                        }
                        if let Some(rebuild) = rebuild {
                            server.view.rebuild_protected = rebuild;
                        }
                    }
                }),
            ));
            action_id
        }
        "create_image" => {
            let kind = string_field(&body, "type")?.unwrap_or_else(|| "snapshot".into());
            if kind != "snapshot" {
                return Err(ApiError::invalid_field(
                    "type",
                    format!("'{kind}' is not supported: backups need enabled backups"),
                ));
            }
            let description = string_field(&body, "description")?;
            let labels = checks::labels(body.get("labels"))?.unwrap_or_default();
            let source = world
                .servers
                .get(&id)
                .ok_or_else(|| ApiError::not_found("server"))?
                .view
                .clone();
            let source_image = source
                .image_id
                .and_then(|image_id| world.images.get(&image_id))
                .map(|image| image.view.clone());
            let now_text = rfc3339(inner.clock.unix_at(now));
            let image_id = world.new_image_id();
            world.images.insert(
                image_id,
                ImageRec {
                    view: Image {
                        id: image_id,
                        kind: ImageKind::Snapshot,
                        status: ImageStatus::Creating,
                        name: None,
                        description: description
                            .unwrap_or_else(|| format!("{server_name}-{now_text}")),
                        image_size: None,
                        disk_size: source.primary_disk_size as f64,
                        created: now_text,
                        created_from: Some((id, server_name.clone())),
                        os_flavor: source_image
                            .as_ref()
                            .map_or_else(|| "unknown".into(), |image| image.os_flavor.clone()),
                        os_version: source_image.and_then(|image| image.os_version),
                        architecture: source.architecture.clone(),
                        delete_protected: false,
                        deprecated: None,
                        labels,
                    },
                    host_copy: false,
                },
            );
            let action_id = world.start_action(
                "create_image",
                vec![(id, "server"), (image_id, "image")],
                now,
                durations.snapshot_base,
            );
            if let Some(image) = world.images.get(&image_id) {
                extra.insert("image".into(), image_json(&image.view));
            }
            task = boxed(ops::create_image(
                Arc::clone(inner),
                id,
                image_id,
                action_id,
                now,
            ));
            action_id
        }
        _ => return Err(ApiError::not_found("route")),
    };
    let action = world
        .actions
        .get(&action_id)
        .map(|action| action_json(action, now, &inner.clock));
    drop(world);
    inner.spawn(task);
    let mut body = Map::new();
    body.insert("action".into(), json!(action));
    body.extend(extra);
    created(Value::Object(body))
}

// ---- actions ----

fn action_fields(items: &mut Vec<Value>, query: &Query) -> Result<(), ApiError> {
    query::filter_by_field(
        items,
        query,
        "status",
        "status",
        Some(&["running", "success", "error"]),
    )?;
    query::sort(
        items,
        query,
        &["id", "command", "status", "started", "finished"],
    )
}

fn list_actions(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let raw_ids = query.all("id");
    if raw_ids.is_empty() {
        return Err(ApiError::invalid_field(
            "id",
            "at least one action ID is required",
        ));
    }
    let mut ids = Vec::new();
    for raw in raw_ids {
        let id = raw
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_field("id", format!("'{raw}' is not a valid ID")))?;
        ids.push(id);
    }
    let now = inner.clock.now();
    let mut items: Vec<Value> = {
        let world = inner.world();
        world
            .actions
            .values()
            .filter(|action| ids.contains(&action.id))
            .map(|action| action_json(action, now, &inner.clock))
            .collect()
    };
    action_fields(&mut items, query)?;
    ok(query::paginate("actions", items, query)?)
}

fn get_action(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let now = inner.clock.now();
    let world = inner.world();
    let action = world
        .actions
        .get(&id)
        .ok_or_else(|| ApiError::not_found("action"))?;
    ok(json!({"action": action_json(action, now, &inner.clock)}))
}

fn on_server(action: &super::world::ActionRec, server_id: u64) -> bool {
    action
        .resources
        .iter()
        .any(|(id, kind)| *id == server_id && *kind == "server")
}

fn server_actions(inner: &Inner, id: u64, query: &Query) -> Result<Reply, ApiError> {
    let now = inner.clock.now();
    let mut items: Vec<Value> = {
        let world = inner.world();
        if !world.servers.contains_key(&id) {
            return Err(ApiError::not_found("server"));
        }
        world
            .actions
            .values()
            .filter(|action| on_server(action, id))
            .map(|action| action_json(action, now, &inner.clock))
            .collect()
    };
    action_fields(&mut items, query)?;
    ok(query::paginate("actions", items, query)?)
}

fn get_server_action(inner: &Inner, server_id: u64, action_id: u64) -> Result<Reply, ApiError> {
    let now = inner.clock.now();
    let world = inner.world();
    if !world.servers.contains_key(&server_id) {
        return Err(ApiError::not_found("server"));
    }
    let action = world
        .actions
        .get(&action_id)
        .filter(|action| on_server(action, server_id))
        .ok_or_else(|| ApiError::not_found("action"))?;
    ok(json!({"action": action_json(action, now, &inner.clock)}))
}

// ---- images ----

fn list_images(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let include_deprecated = match query.get("include_deprecated") {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "include_deprecated",
                format!("'{other}' is not a boolean"),
            ));
        }
    };
    let mut items: Vec<Value> = inner
        .world()
        .images
        .values()
        .filter(|image| include_deprecated || image.view.deprecated.is_none())
        .map(|image| image_json(&image.view))
        .collect();
    query::filter_by_field(
        &mut items,
        query,
        "type",
        "type",
        Some(&["system", "app", "snapshot", "backup"]),
    )?;
    query::filter_by_field(
        &mut items,
        query,
        "status",
        "status",
        Some(&["available", "creating", "unavailable"]),
    )?;
    query::filter_by_field(
        &mut items,
        query,
        "architecture",
        "architecture",
        Some(&["x86", "arm"]),
    )?;
    query::filter_by_field(&mut items, query, "name", "name", None)?;
    if let Some(bound_to) = query.get("bound_to") {
        let wanted = bound_to.parse::<u64>().map_err(|_| {
            ApiError::invalid_field("bound_to", format!("'{bound_to}' is not a valid ID"))
        })?;
        items.retain(|item| item.get("bound_to").and_then(Value::as_u64) == Some(wanted));
    }
    query::filter_by_selector(&mut items, query)?;
    query::sort(&mut items, query, &["id", "name", "created"])?;
    ok(query::paginate("images", items, query)?)
}

fn get_image(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let world = inner.world();
    let image = world
        .images
        .get(&id)
        .ok_or_else(|| ApiError::not_found("image"))?;
    ok(json!({"image": image_json(&image.view)}))
}

fn update_image(inner: &Inner, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let description = string_field(&body, "description")?;
    let labels = checks::labels(body.get("labels"))?;
    if let Some(kind) = string_field(&body, "type")?
        && kind != "snapshot"
    {
        return Err(ApiError::invalid_field(
            "type",
            format!("'{kind}' is not one of snapshot"),
        ));
    }
    let mut world = inner.world();
    let image = world
        .images
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("image"))?;
    if image.view.kind == ImageKind::System {
        return Err(ApiError::new(
            403,
            "forbidden",
            "system images cannot be modified",
        ));
    }
    if let Some(description) = description {
        image.view.description = description;
    }
    if let Some(labels) = labels {
        image.view.labels = labels;
    }
    ok(json!({"image": image_json(&image.view)}))
}

async fn delete_image(inner: &Arc<Inner>, id: u64) -> Result<Reply, ApiError> {
    let removed = {
        let mut world = inner.world();
        let image = world
            .images
            .get(&id)
            .ok_or_else(|| ApiError::not_found("image"))?;
        if image.view.kind == ImageKind::System {
            return Err(ApiError::new(
                403,
                "forbidden",
                "system images cannot be deleted",
            ));
        }
        if image.view.delete_protected {
            return Err(ApiError::new(
                423,
                "protected",
                "image is protected against deletion",
            ));
        }
        world.images.remove(&id)
    };
    if removed.is_some_and(|image| image.host_copy) {
        // In a task of its own, so that a client hanging up does not leave the copy behind.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let task_inner = Arc::clone(inner);
        inner.spawn(async move {
            let lock = task_inner.image_lock(id);
            let _guard = lock.lock().await;
            // The image is gone from the API either way; a leftover copy is the host's to report.
            let _ = task_inner.host.delete_image(id).await;
            let _ = sender.send(());
        });
        let _ = receiver.await;
    }
    no_content()
}

fn image_protection(inner: &Arc<Inner>, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let delete = bool_field(&body, "delete")?;
    let now = inner.clock.now();
    let mut world = inner.world();
    let image = world
        .images
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("image"))?;
    if image.view.kind == ImageKind::System {
        return Err(ApiError::new(
            403,
            "forbidden",
            "system images cannot be modified",
        ));
    }
    // Protection applies at once, so a delete right after the call is refused.
    if let Some(delete) = delete {
        image.view.delete_protected = delete;
    }
    let action_id = world.start_action(
        "change_protection",
        vec![(id, "image")],
        now,
        inner.durations.change_protection,
    );
    let action = world
        .actions
        .get(&action_id)
        .map(|action| action_json(action, now, &inner.clock));
    drop(world);
    inner.spawn(ops::timed(
        Arc::clone(inner),
        action_id,
        now.saturating_add(inner.durations.change_protection),
        Box::new(|_: &mut World| {}),
    ));
    created(json!({"action": action}))
}

// ---- SSH keys ----

fn list_ssh_keys(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let mut items: Vec<Value> = inner.world().ssh_keys.values().map(ssh_key_json).collect();
    query::filter_by_field(&mut items, query, "name", "name", None)?;
    query::filter_by_field(&mut items, query, "fingerprint", "fingerprint", None)?;
    query::filter_by_selector(&mut items, query)?;
    query::sort(&mut items, query, &["id", "name"])?;
    ok(query::paginate("ssh_keys", items, query)?)
}

fn create_ssh_key(inner: &Inner, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let name = required_string(&body, "name")?;
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "must not be empty"));
    }
    let public_key = required_string(&body, "public_key")?;
    let labels = checks::labels(body.get("labels"))?.unwrap_or_default();
    let fingerprint = checks::ssh_fingerprint(&public_key)
        .ok_or_else(|| ApiError::invalid_field("public_key", "invalid public key"))?;
    let now = inner.clock.now();
    let mut world = inner.world();
    if world.ssh_keys.values().any(|key| key.name == name) {
        return Err(ApiError::uniqueness("name", "SSH key name is already used"));
    }
    if world
        .ssh_keys
        .values()
        .any(|key| key.fingerprint == fingerprint)
    {
        return Err(ApiError::uniqueness(
            "public_key",
            "SSH key with the same fingerprint already exists",
        ));
    }
    let id = world.new_ssh_key_id();
    let key = SshKey {
        id,
        name,
        fingerprint,
        public_key: public_key.trim().to_owned(),
        labels,
        created: rfc3339(inner.clock.unix_at(now)),
    };
    let body = json!({"ssh_key": ssh_key_json(&key)});
    world.ssh_keys.insert(id, key);
    created(body)
}

fn get_ssh_key(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let world = inner.world();
    let key = world
        .ssh_keys
        .get(&id)
        .ok_or_else(|| ApiError::not_found("SSH key"))?;
    ok(json!({"ssh_key": ssh_key_json(key)}))
}

fn update_ssh_key(inner: &Inner, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let body = object_body(body, true)?;
    let name = string_field(&body, "name")?;
    let labels = checks::labels(body.get("labels"))?;
    let mut world = inner.world();
    if !world.ssh_keys.contains_key(&id) {
        return Err(ApiError::not_found("SSH key"));
    }
    if let Some(name) = &name
        && world
            .ssh_keys
            .values()
            .any(|key| key.id != id && &key.name == name)
    {
        return Err(ApiError::uniqueness("name", "SSH key name is already used"));
    }
    let key = world
        .ssh_keys
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("SSH key"))?;
    if let Some(name) = name {
        key.name = name;
    }
    if let Some(labels) = labels {
        key.labels = labels;
    }
    ok(json!({"ssh_key": ssh_key_json(key)}))
}

fn delete_ssh_key(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    inner
        .world()
        .ssh_keys
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("SSH key"))?;
    no_content()
}

// ---- server types and locations ----

fn list_server_types(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let mut items: Vec<Value> = {
        let world = inner.world();
        world
            .catalog
            .server_types
            .iter()
            .map(|server_type| server_type.to_json(&world.catalog))
            .collect()
    };
    query::filter_by_field(&mut items, query, "name", "name", None)?;
    query::sort(&mut items, query, &["id", "name"])?;
    ok(query::paginate("server_types", items, query)?)
}

fn get_server_type(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let world = inner.world();
    let server_type = world
        .catalog
        .server_types
        .iter()
        .find(|server_type| server_type.id == id)
        .ok_or_else(|| ApiError::not_found("server type"))?;
    ok(json!({"server_type": server_type.to_json(&world.catalog)}))
}

fn list_locations(inner: &Inner, query: &Query) -> Result<Reply, ApiError> {
    let mut items: Vec<Value> = inner
        .world()
        .catalog
        .locations
        .iter()
        .map(|location| location.to_json())
        .collect();
    query::filter_by_field(&mut items, query, "name", "name", None)?;
    query::sort(&mut items, query, &["id", "name"])?;
    ok(query::paginate("locations", items, query)?)
}

fn get_location(inner: &Inner, id: u64) -> Result<Reply, ApiError> {
    let world = inner.world();
    let location = world
        .catalog
        .locations
        .iter()
        .find(|location| location.id == id)
        .ok_or_else(|| ApiError::not_found("location"))?;
    ok(json!({"location": location.to_json()}))
}
